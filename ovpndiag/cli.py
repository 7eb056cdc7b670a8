"""The ``ovpndiag`` command line: thin click commands over the library.

Commands import what they need inside their own bodies, so ``--help`` and
``--version`` stay instant and ``check`` loads nothing it does not use.
"""

import functools
import json
import sys

import click

from . import __version__

PROBE_EPILOG = """\b
Exit status: 0 the server answered a valid reset; 1 it did not (no reply, port
closed, not OpenVPN, invalid HMAC or tag, wrong session); 2 bad options or key files."""

CHECK_EPILOG = """\b
Exit status (Monitoring Plugins): 0 OK, 1 WARNING (response time beyond -w, a
server clock or early-negotiation warning, or with --warn-on-retry an answer only
after retries), 2 CRITICAL (no reply, port closed, reply not OpenVPN, HMAC/tag
invalid, wrong session, or beyond -c), 3 UNKNOWN (bad options, unreadable key,
unresolvable host, internal error)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ovpndiag")
def main():
    """Packet-level OpenVPN diagnostics: probe servers the way a client would,
    check them from monitoring, read OpenVPN captures."""


def probe_options(command):
    """Options shared by probe and check (and their help texts)."""
    options = [
        click.argument("host", required=False),
        click.option("-p", "--port", type=click.IntRange(1, 65535), help="Server port (default 1194)."),
        click.option("--proto", type=click.Choice(["udp", "tcp"]), help="Transport (default udp)."),
        click.option("-4", "family", flag_value=4, help="IPv4 addresses only."),
        click.option("-6", "family", flag_value=6, help="IPv6 addresses only (default: every resolved "
                                                        "address in order until one answers)."),
        click.option("-t", "--timeout", type=float, default=10.0, show_default=True,
                     help="The whole time budget, seconds."),
        click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
                     help="Extra UDP attempts."),
        click.option("--retry-interval", type=float, default=2.0, show_default=True,
                     help="Seconds between UDP attempts."),
        click.option("--tls-auth", "tls_auth", metavar="FILE", help="tls-auth static key."),
        click.option("--key-direction", type=click.Choice(["0", "1", "none"]),
                     help="tls-auth key direction of this client (default 1, or the profile's)."),
        click.option("--auth", metavar="DIGEST", help="tls-auth HMAC digest (default SHA1, or the profile's)."),
        click.option("--tls-crypt", "tls_crypt", metavar="FILE", help="tls-crypt static key."),
        click.option("--tls-crypt-v2", "tls_crypt_v2", metavar="FILE", help="tls-crypt-v2 client key."),
        click.option("--config", metavar="PROFILE.ovpn",
                     help="Take remote, port, proto, keys, key-direction and auth from a client profile; "
                          "options given here win."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _settings(options):
    from .settings import probe_settings

    return probe_settings(
        host=options["host"], port=options["port"], proto=options["proto"], family=options["family"],
        timeout=options["timeout"], retries=options["retries"], retry_interval=options["retry_interval"],
        tls_auth=options["tls_auth"], key_direction=options["key_direction"], auth=options["auth"],
        tls_crypt=options["tls_crypt"], tls_crypt_v2=options["tls_crypt_v2"], config=options["config"])


class UserError(click.ClickException):
    """Bad options or key files: exit status 2, like click's own usage errors."""

    exit_code = 2


def _user_errors():
    from .keys import KeyFileError
    from .monitoring import RangeError
    from .pcapout import WriteError
    from .settings import SettingsError

    return KeyFileError, SettingsError, RangeError, WriteError


@main.command(epilog=PROBE_EPILOG)
@probe_options
@click.option("--try-keys", is_flag=True,
              help="With a key file: try every key direction, digest and wrapping, report what the server answers.")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Save the exchange as a capture (never overwrites).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def probe(as_json, try_keys, write_path, **options):
    """Send an OpenVPN client reset to HOST and explain what happens."""
    try:
        settings = _settings(options)
        if try_keys:
            result = _try_keys(settings, options)
        else:
            from .probe import probe as run_probe

            result = run_probe(settings)
            if write_path:
                from .pcapout import write_exchange

                write_exchange(write_path, result.exchange)
    except _user_errors() as error:
        raise UserError(str(error)) from None
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif try_keys:
        from .render.report import try_keys_report

        click.echo(try_keys_report(result))
    else:
        from .render.report import probe_report

        click.echo(probe_report(result, settings))
    sys.exit(0 if result.ok else 1)


def _try_keys(settings, options):
    from .keys import read_key
    from .settings import SettingsError
    from .trykeys import try_keys

    path = options["tls_auth"] or options["tls_crypt"] or options["tls_crypt_v2"]
    if not path:
        raise SettingsError("--try-keys needs a key file: --tls-auth, --tls-crypt or --tls-crypt-v2 FILE")
    try:
        return try_keys(settings, read_key(path))
    except TypeError as error:
        raise SettingsError(str(error)) from None


class PluginCommand(click.Command):
    """A monitoring plugin: even a usage error is UNKNOWN (3) with one status line."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            _plugin_exit_unknown(error.format_message())


def _plugin_exit_unknown(message):
    from .monitoring import Outcome, UNKNOWN
    from .render.nagios import plugin_output

    click.echo(plugin_output(Outcome(UNKNOWN, message)))
    sys.exit(UNKNOWN)


def plugin(function):
    """Run a check body: any unexpected error is UNKNOWN with a message, never a traceback."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SystemExit:
            raise
        except _user_errors() as error:
            _plugin_exit_unknown(str(error))
        except Exception as error:  # a bug: still one line and UNKNOWN
            _plugin_exit_unknown(f"internal error: {type(error).__name__}: {error}")
    return run


@main.command(cls=PluginCommand, epilog=CHECK_EPILOG)
@probe_options
@click.option("-w", "--warning", metavar="RANGE", help="Warning threshold on the response time, seconds.")
@click.option("-c", "--critical", metavar="RANGE", help="Critical threshold on the response time, seconds.")
@click.option("--warn-on-retry", is_flag=True, help="WARNING when only a retried reset was answered.")
@click.option("-v", "--verbose", is_flag=True, help="Add the probe's detail lines after the status line.")
@plugin
def check(warning, critical, warn_on_retry, verbose, **options):
    """Nagios/Icinga plugin: probe HOST and report OK/WARNING/CRITICAL/UNKNOWN with perfdata."""
    from .check import evaluate
    from .monitoring import Range
    from .probe import probe as run_probe
    from .render.nagios import plugin_output

    warning_range = Range.parse(warning) if warning else None
    critical_range = Range.parse(critical) if critical else None
    settings = _settings(options)
    result = run_probe(settings)
    outcome = evaluate(result, warning_range, critical_range, settings.timeout,
                       1 + settings.retries if settings.proto == "udp" else 1, warn_on_retry)
    click.echo(plugin_output(outcome, verbose))
    sys.exit(outcome.state)
