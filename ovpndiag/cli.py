"""The ``ovpndiag`` command line: thin click commands over the library.

Commands import what they need inside their own bodies, so ``--help`` and
``--version`` stay instant and ``check`` loads nothing it does not use.
"""

import functools
import json
import sys
from typing import Optional

import click

from . import __version__

PROBE_EPILOG = """\b
Exit status: 0 the server answered a valid reset; 1 it did not (no reply, port
closed, not OpenVPN, invalid HMAC or tag, wrong session); 2 bad options or key files;
74 the output could not be written."""

CHECK_EPILOG = """\b
Exit status (Monitoring Plugins): 0 OK, 1 WARNING (response time beyond -w, a
server clock or early-negotiation warning, or with --warn-on-retry an answer only
after retries), 2 CRITICAL (no reply, port closed, reply not OpenVPN, HMAC/tag
invalid, wrong session, or beyond -c), 3 UNKNOWN (bad options, unreadable key,
unresolvable host, output that cannot be written, internal error).
\b
With --stage tls|auth|push|data: CRITICAL when a stage fails (the status line
names it and why) or the server certificate ends within --cert-critical days,
has expired or is not yet valid; WARNING within --cert-warning days, on
AUTH_PENDING or RESTART; UNKNOWN for an unreadable CA, certificate, key,
passphrase or credentials file."""


EX_SOFTWARE, EX_IOERR = 70, 74  # sysexits.h: an internal error; an input/output error


class OutputError(Exception):
    """The result could not be written where the user sent it (a full disk, a
    closed standard output): theirs to know, not a bug to report."""


def run():
    """The console entry point: one line on stderr, never a traceback - an output or
    system error says what failed (exit 74), a bug asks to be reported (exit 70)."""
    try:
        try:
            main()
        finally:
            _flush_stdout()  # what is still buffered (the listing's last lines) must get out too
    except OutputError as error:
        _give_up("ovpndiag", f"cannot write the output: {error}", EX_IOERR)
    except OSError as error:  # the system failed us: a listing's write to a full disk, a file being written
        import errno

        where = f": {error.filename}" if error.filename else ""
        writing = error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EPIPE)
        _give_up("ovpndiag", f"{'cannot write: ' if writing else ''}{error.strerror or error}{where}", EX_IOERR)
    except Exception as error:  # click handles usage errors and exits itself
        _give_up("ovpndiag", f"internal error: {type(error).__name__}: {error} (please report it)", EX_SOFTWARE)


def emit(text, colour=None):
    """click.echo to standard output (``colour``: True keeps click's styles, False strips
    them, None: on a terminal only), or OutputError saying why it could not be written."""
    if sys.stdout is None:  # started with it closed (>&-): Python has no stdout object at all
        raise OutputError("standard output is closed")
    try:
        click.echo(text, color=colour)
    except OSError as error:
        raise OutputError(error.strerror or str(error)) from None


def _flush_stdout():
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except OSError as error:
        raise OutputError(error.strerror or str(error)) from None


def _give_up(prog, message, status):
    """One line on stderr and exit; what stdout still buffers goes nowhere, so that
    Python does not fail on it again (with a traceback) as it exits."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass
    try:
        click.echo(f"{prog}: error: {message}", err=True)
    except (OSError, ValueError):  # stderr is gone too: the status is all that is left
        pass
    sys.exit(status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ovpndiag")
@click.pass_context
def main(context):
    """Packet-level OpenVPN diagnostics: probe servers the way a client would,
    check them from monitoring, read OpenVPN captures."""
    if sys.stdout is None and context.invoked_subcommand != "check":  # (check says UNKNOWN itself)
        raise OutputError("standard output is closed")  # (started with >&-): said before any work


def colour_option(command):
    return click.option("--color", "--colour", "color", type=click.Choice(["auto", "always", "never"]),
                        default="auto", show_default=True,
                        help="Colour the output: auto is on a terminal unless NO_COLOR is set.")(command)


def _colour(choice) -> Optional[bool]:
    """--color as click.echo's ``color``: True, False, or None (auto: a terminal decides).
    NO_COLOR (no-color.org), set and not empty, turns auto off; --color always wins."""
    import os

    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return None


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
                     help="Seconds between UDP attempts (the last one waits for the rest of -t)."),
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
    from .client import CredentialsError
    from .keys import KeyFileError
    from .monitoring import RangeError
    from .pcapout import WriteError
    from .settings import SettingsError

    return KeyFileError, SettingsError, RangeError, WriteError, CredentialsError


@main.command(epilog=PROBE_EPILOG)
@probe_options
@click.option("--try-keys", is_flag=True,
              help="With a key file: try every key direction, digest and wrapping, report what the server answers.")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Save the exchange as a capture (never overwrites).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@colour_option
def probe(as_json, try_keys, write_path, color, **options):
    """Send an OpenVPN client reset to HOST and explain what happens."""
    try:
        settings = _settings(options)
        if try_keys:
            result = _try_keys(settings, options)
        else:
            from .pcapout import PcapWriter
            from .probe import probe as run_probe

            writer = PcapWriter(write_path) if write_path else None  # refuse before sending anything
            try:
                result = run_probe(settings)
            except BaseException:
                if writer is not None:
                    writer.close(failed=True)
                raise
            if writer is not None:  # a failed probe that sent nothing (no address, TCP refused): no file
                writer.write_exchange(result.exchange)
                writer.close(failed=not result.ok)
    except _user_errors() as error:
        raise UserError(str(error)) from None
    if as_json:
        emit(json.dumps(result.to_dict()))
    elif try_keys:
        from .render.report import try_keys_report

        emit(try_keys_report(result), _colour(color))
    else:
        from .render.report import probe_report

        emit(probe_report(result, settings), _colour(color))
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
        from .monitoring import UNKNOWN

        if sys.stdout is None:  # nothing it finds out could be told: say so at once
            _give_up(_prog(), "cannot write the output: standard output is closed", UNKNOWN)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            _plugin_exit_unknown(error.format_message())
        except OSError as error:  # -V or --help printed to a full disk
            _give_up(_prog(), f"cannot write the output: {error.strerror or error}", UNKNOWN)


def plugin_print(text, prog="ovpndiag"):
    """A plugin's output: when it cannot be written, the monitoring system still gets
    UNKNOWN and the reason on stderr (not WARNING, as click makes of a broken pipe)."""
    from .monitoring import UNKNOWN

    try:
        emit(text)
    except OutputError as error:
        _give_up(prog, f"cannot write the output: {error}", UNKNOWN)


def _plugin_exit_unknown(message):
    from .monitoring import Outcome, UNKNOWN
    from .render.nagios import plugin_output

    plugin_print(plugin_output(Outcome(UNKNOWN, message)), _prog())
    sys.exit(UNKNOWN)


def _prog():
    """The name to sign stderr lines with: ovpndiag, or a plugin of its own (check_openvpn)."""
    context = click.get_current_context(silent=True)
    if context is None or context.find_root().command is main:
        return "ovpndiag"
    return context.find_root().info_name or "ovpndiag"


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


def run_plugin(command, prog):
    """The entry point of a plugin of its own (check_openvpn): run() with monitoring
    statuses - whatever goes wrong is one line and UNKNOWN, never a traceback."""
    from .monitoring import UNKNOWN

    try:
        try:
            command.main(prog_name=prog)
        finally:
            _flush_stdout()
    except OutputError as error:
        _give_up(prog, f"cannot write the output: {error}", UNKNOWN)
    except Exception as error:  # the body is guarded by @plugin: this is click's own output failing
        _give_up(prog, f"{type(error).__name__}: {error}", UNKNOWN)


def handshake_options(default_stage):
    """The staged handshake's options, shared by handshake and check (after probe_options)."""
    from .client import STAGES

    def decorate(command):
        options = [
            click.option("--stage", type=click.Choice(STAGES), default=default_stage, show_default=True,
                         help="How far to go: reset (the server's answer), tls (the control channel's TLS and "
                              "the server certificate), auth (key-method 2 and credentials), push (PUSH_REPLY), "
                              "data (an ICMP echo through the tunnel)."),
            click.option("--ca", metavar="FILE", help="CA certificate(s) to verify the server with (PEM)."),
            click.option("--cert", metavar="FILE", help="Client certificate (PEM)."),
            click.option("--key", metavar="FILE", help="Client private key (PEM)."),
            click.option("--askpass", metavar="FILE", help="The private key's passphrase, first line of FILE."),
            click.option("--auth-user-pass", "auth_user_pass", metavar="FILE",
                         help="Username (line 1) and password (line 2), as OpenVPN reads them."),
            click.option("--remote-cert-tls", "remote_cert_tls", type=click.Choice(["server"]),
                         help="Require the serverAuth extended key usage in the server certificate."),
            click.option("--verify-x509-name", "verify_x509_name", metavar="NAME",
                         help="Require this server certificate name (see --verify-x509-type)."),
            click.option("--verify-x509-type", "verify_x509_type",
                         type=click.Choice(["subject", "name", "name-prefix"]),
                         help="How --verify-x509-name compares: the whole subject, the CN, or a CN prefix "
                              "(default: subject when NAME holds '=', else name)."),
            click.option("--data-ciphers", "data_ciphers", metavar="LIST",
                         help="Data-channel ciphers to offer, ':'-separated (default AES-256-GCM:AES-128-GCM:"
                              "CHACHA20-POLY1305)."),
            click.option("--tls-version-max", "tls_version_max", type=click.Choice(["1.2", "1.3"]),
                         help="Highest TLS version to offer (to test a server's tls-version-min)."),
            click.option("--ping-target", "ping_target", metavar="IP",
                         help="Where the data stage's ICMP echo goes (default: the pushed route-gateway)."),
            click.option("--count", type=click.IntRange(1, 1000), default=1, show_default=True,
                         help="ICMP echoes to send in the data stage (loss and RTT)."),
            click.option("--cert-warning", "cert_warning", type=click.FloatRange(0), default=30.0,
                         show_default=True, metavar="DAYS",
                         help="WARNING when the server certificate ends within DAYS."),
            click.option("--cert-critical", "cert_critical", type=click.FloatRange(0), default=7.0,
                         show_default=True, metavar="DAYS",
                         help="CRITICAL when it ends within DAYS (or has expired)."),
            click.option("--keylog", metavar="FILE",
                         help="Append the control channel's TLS secrets to FILE (NSS key log: Wireshark then "
                              "decrypts a --write capture)."),
        ]
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _handshake_settings(options):
    """HandshakeSettings from the command line (and its --config profile)."""
    from .handshake_settings import handshake_settings

    return handshake_settings(
        _settings(options), ca=options["ca"], cert=options["cert"], key=options["key"],
        askpass=options["askpass"], auth_user_pass=options["auth_user_pass"],
        remote_cert_tls=options["remote_cert_tls"], verify_x509_name=options["verify_x509_name"],
        verify_x509_type=options["verify_x509_type"], data_ciphers=options["data_ciphers"],
        stage=options["stage"], ping_target=options["ping_target"], count=options["count"],
        tls_version_max=options["tls_version_max"],
        keylog=options["keylog"], write=options.get("write_path"), config=options["config"])


HANDSHAKE_EPILOG = """\b
Exit status: 0 the handshake went as far as --stage and the server certificate
is not within --cert-warning days of its end; 1 it stopped earlier (the report
says where and why) or the certificate ends soon; 2 bad options, or an
unreadable or malformed CA, certificate, key, passphrase or credentials file;
74 the output could not be written."""


@main.command(epilog=HANDSHAKE_EPILOG)
@probe_options
@handshake_options("data")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Save every packet as a capture (never overwrites).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@colour_option
def handshake(as_json, color, **options):
    """Walk the whole OpenVPN handshake with HOST as a client would, stage by
    stage (reset, tls, auth, push, data), and say where it stops and why."""
    from .handshake_check import judge, to_dict

    try:
        settings = _handshake_settings(options)
        from .client import Client
        from .pcapout import PcapWriter

        client = Client(settings)  # reads the credentials: their errors come before anything is sent
        writer = PcapWriter(settings.write) if settings.write else None
    except _user_errors() as error:
        raise UserError(str(error)) from None
    try:
        result = client.run(settings.stage)
    except BaseException:
        if writer is not None:
            writer.close(failed=True)
        raise
    if writer is not None:  # nothing sent (no address, TCP refused): no file
        writer.write_exchange(client.exchange)
        writer.close(failed=not client.exchange)
    judgement = judge(result, options["cert_warning"], options["cert_critical"])
    if as_json:
        emit(json.dumps(to_dict(result, judgement)))
    else:
        from .render.handshake import handshake_report

        emit(handshake_report(result, judgement, settings.stage), _colour(color))
    sys.exit(0 if judgement.state == 0 else 1)


@main.command(cls=PluginCommand, epilog=CHECK_EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="ovpndiag check", message="%(prog)s %(version)s")
@probe_options
@handshake_options("reset")
@click.option("-w", "--warning", metavar="RANGE", help="Warning threshold on the response time, seconds.")
@click.option("-c", "--critical", metavar="RANGE", help="Critical threshold on the response time, seconds.")
@click.option("--warn-on-retry", is_flag=True, help="WARNING when only a retried reset was answered.")
@click.option("-v", "--verbose", is_flag=True, help="Add the probe's detail lines after the status line.")
@plugin
def check(warning, critical, warn_on_retry, verbose, **options):
    """Nagios/Icinga plugin: probe HOST and report OK/WARNING/CRITICAL/UNKNOWN with perfdata.
    With --stage beyond reset, walk the handshake that far (see 'ovpndiag handshake')."""
    from .monitoring import Range
    from .render.nagios import plugin_output

    warning_range = Range.parse(warning) if warning else None
    critical_range = Range.parse(critical) if critical else None
    if options["stage"] != "reset":  # the client (TLS, cryptography) only when asked for
        outcome = _check_handshake(options, warning_range, critical_range, warn_on_retry)
    else:
        from .check import evaluate
        from .probe import probe as run_probe

        settings = _settings(options)
        result = run_probe(settings)
        outcome = evaluate(result, warning_range, critical_range, settings.timeout,
                           1 + settings.retries if settings.proto == "udp" else 1, warn_on_retry)
    plugin_print(plugin_output(outcome, verbose))
    sys.exit(outcome.state)


def _check_handshake(options, warning_range, critical_range, warn_on_retry):
    from .client import Client
    from .handshake_check import evaluate

    settings = _handshake_settings(options)
    result = Client(settings).run(settings.stage)
    return evaluate(result, settings.stage, warning_range, critical_range, settings.probe.timeout,
                    options["cert_warning"], options["cert_critical"], warn_on_retry)


# --- dissect and sniff ------------------------------------------------------------

def dissect_options(command):
    """Options shared by dissect and sniff."""
    options = [
        click.option("-p", "--port", "ports", type=click.IntRange(1, 65535), multiple=True,
                     help="Also read this port as OpenVPN (1194 always is; other ports are recognised "
                          "from their packets). Repeatable."),
        click.option("--wrapping", type=click.Choice(["none", "tls-auth", "tls-crypt", "tls-crypt-v2"]),
                     help="Override the wrapping inferred per flow."),
        click.option("--auth", metavar="DIGEST", help="tls-auth digest (fixes the HMAC size)."),
        click.option("--tls-auth", "tls_auth", metavar="FILE", help="Verify tls-auth HMACs with this key."),
        click.option("--key-direction", type=click.Choice(["0", "1", "none"]),
                     help="The client's tls-auth key direction (default: worked out per direction)."),
        click.option("--tls-crypt", "tls_crypt", metavar="FILE", help="Decrypt tls-crypt with this key."),
        click.option("--tls-crypt-v2", "tls_crypt_v2", metavar="FILE",
                     help="tls-crypt-v2 server key (opens every client's WKc) or client key."),
        click.option("--config", metavar="PROFILE.ovpn", help="Take keys, key-direction and auth from a profile."),
        click.option("-V", "--verbose", is_flag=True, help="A field tree per packet, like tshark -V."),
        click.option("-x", "--hex", "hex_dump", is_flag=True,
                     help="A hex and ASCII dump of each packet's OpenVPN bytes, like tshark -x (after its tree "
                          "with -V, else after its line)."),
        click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per packet (or session)."),
        click.option("--sessions", is_flag=True, help="One summary per OpenVPN session instead of packets."),
        click.option("-c", "--count", type=click.IntRange(1), help="Stop after this many OpenVPN packets."),
        click.option("-Y", "--display-filter", "display_filter", metavar="FILTER", callback=_display_filter,
                     help="Show only the packets that match, in Wireshark's syntax over the --json keys: "
                          "-Y 'opcode == P_CONTROL_V1 and hmac_valid == false' (see README)."),
        click.option("-T", "output_format", type=click.Choice(["text", "fields", "json", "ek"]),
                     help="fields: the -e fields tab-separated, one line per packet, as tshark -T fields; "
                          "json/ek: as --json (JSON Lines)."),
        click.option("-e", "fields", metavar="FIELD", multiple=True,
                     help="A field (a --json key) for -T fields. Repeatable."),
        click.option("-E", "field_settings", metavar="NAME=VALUE", multiple=True,
                     help="-T fields options as tshark's: header=y, separator=,|/t|/s, quote=d, "
                          "aggregator=CHAR, occurrence=a|f|l. Repeatable."),
        colour_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _display_filter(_context, _parameter, text):
    """-Y compiled once, at parsing: a bad filter stops before any file is read."""
    if text is None:
        return None
    from .dissect.displayfilter import FilterError, compile_filter

    try:
        return compile_filter(text)
    except FilterError as error:
        raise UserError(f"-Y: {error}") from None


def _fields_output(options):
    """-T fields / -e / -E checked, and -T json|ek folded into --json."""
    from .render.fields import FieldsError, check_names, parse_options

    if options["output_format"] in ("json", "ek"):
        options["as_json"] = True
    if options["output_format"] != "fields":
        if options["fields"] or options["field_settings"]:
            raise UserError("-e and -E need -T fields")
        return None
    if not options["fields"]:
        raise UserError("-T fields needs at least one -e FIELD")
    if options["as_json"] or options["verbose"] or options.get("hex_dump") or options["sessions"]:
        raise UserError("-T fields is an output of its own: not with --json, -V, -x or --sessions")
    try:
        check_names(options["fields"])
        return parse_options(options["field_settings"])
    except FieldsError as error:
        raise UserError(str(error)) from None


def _reader_options(options):
    from .dissect.infer import candidates_for
    from .dissect.keyring import KeyRing
    from .keys import TLSCryptV2ClientKey, TLSCryptV2ServerKey
    from .protocol import digest_name  # not .layers: the listing and JSON never import Scapy
    from .dissect.reader import Options
    from .profile import control_keys, overlay, read_profile
    from .settings import SettingsError

    profile = read_profile(options["config"]) if options["config"] else None
    merged = overlay(profile, auth=options["auth"], key_direction=options["key_direction"])
    try:
        digest = digest_name(merged.auth) if merged.auth else None
    except ValueError as error:
        raise SettingsError(str(error)) from None
    digest = digest if options["wrapping"] in (None, "tls-auth") else None
    given = control_keys(profile, options["tls_auth"], options["tls_crypt"], options["tls_crypt_v2"],
                         v2_types=(TLSCryptV2ClientKey, TLSCryptV2ServerKey))
    keys = KeyRing(tls_auth=given.tls_auth, tls_crypt=given.tls_crypt, tls_crypt_v2=given.tls_crypt_v2,
                   client_key_direction=None if merged.key_direction is None else str(merged.key_direction))
    wrapping = options["wrapping"]
    candidates = candidates_for(wrapping, digest) if (wrapping or digest) else None
    return Options(ports=options["ports"], candidates=candidates, keys=keys, sessions=options["sessions"],
                   tls_details=options["verbose"])


class _Output:
    """Renders records in the mode asked for; counts them for -c, and what the
    user's keys opened (see ``watch_keys``)."""

    def __init__(self, options, many_files):
        from .render import jsonl, line, sessions as session_render

        self.count, self.limit = 0, options["count"]
        self.sessions = options["sessions"]
        self.as_json = options["as_json"]
        self.file = None
        self.many = many_files
        choice = _colour(options["color"])
        self.fields = options.get("fields_output")  # -T fields: its -E options
        colour = self.colour = (sys.stdout.isatty() if choice is None else choice) and not self.as_json \
            and self.fields is None
        self.listing = not self.as_json and not options["verbose"] and not options["hex_dump"] and self.fields is None
        self.frames = None  # -V: the frames kept to show their headers (capture.keptframes)
        self.filter = options["display_filter"]  # -Y: a predicate on records
        self.take = self.render = self.keep = None
        self.pending = []
        if self.as_json:
            self.render = (lambda record: jsonl.packet_json(record, self.file)) if many_files else jsonl.packet_json
        elif self.fields is not None:
            from .render.fields import fields_renderer, header_line

            render_fields = fields_renderer(list(options["fields"]), self.fields)
            self.render = lambda record: render_fields(record, self.file)
            if self.fields.header:
                self.pending.append(header_line(list(options["fields"]), self.fields))
        elif options["verbose"] or options["hex_dump"]:
            from .render.tree import TreeRenderer

            if options["verbose"]:
                from .capture.keptframes import KeptFrames

                self.frames = KeptFrames()
            self.render = TreeRenderer(self.frames, tree=options["verbose"], hexdump=options["hex_dump"],
                                       line=lambda record: line.packet_line(record, colour))
        elif colour:
            self.render = lambda record: line.packet_line(record, True)
        else:
            self.render = line.packet_line
        self.jsonl, self.session_render = jsonl, session_render
        self.write = sys.stdout.write
        self.matched = None
        if self.sessions and self.filter is not None:
            from .dissect.sessionfilter import MatchedSessions

            self.matched = MatchedSessions()
        self.key_names = {}  # wrapping -> how its key was given, e.g. "--tls-crypt key"
        self.file_start = 0  # self.count when the current file began

    def watch_keys(self, keys, options):
        """Name the keys the user gave, so that ``key_notes`` can say when one opened or
        verified none of the packets it applies to (a key that does not belong to the
        traffic, which otherwise only shows as BAD on every line)."""
        given = (("tls-auth", keys.tls_auth, "tls_auth"), ("tls-crypt", keys.tls_crypt, "tls_crypt"),
                 ("tls-crypt-v2", keys.v2_server or keys.v2_client, "tls_crypt_v2"))
        self.key_names = {kind: f"--{kind} key" if options[option] else f"{kind} key of {options['config']}"
                          for kind, key, option in given if key is not None}
        # What the user pinned for tls-auth may be the culprit, not the key.
        pinned = ([f"key-direction {keys.client_key_direction}"] if keys.client_key_direction else []) + \
                 ([f"--auth {options['auth']}"] if options["auth"] else [])
        self.tls_auth_doubt = (f", or {' and '.join(pinned)} {'is' if len(pinned) == 1 else 'are'} wrong for it"
                               if pinned else "")

    def key_notes(self, path, verdicts):
        """Once per file, on stderr: each key that opened none of the packets it applies to
        (``verdicts``: the reader's key_verdicts)."""
        for kind, (opened, applied) in verdicts.items():
            if kind in self.key_names and applied and not opened:
                where = f"{path}: " if self.many else ""
                verb = "verified" if kind == "tls-auth" else "opened"
                packets = f"{applied:,} packet{'s' if applied != 1 else ''}"
                doubt = self.tls_auth_doubt if kind == "tls-auth" else ""
                click.echo(f"ovpndiag: note: {where}the {self.key_names[kind]} {verb} none of {packets}: "
                           f"it does not belong to this traffic{doubt}", err=True)

    def reader(self, reader_options, records=False):
        """A reader for this output. Its records come out rendered, as (frame, text)
        pairs (the listing's common packets never become record dicts), unless
        ``records`` asks for dicts or session summaries are kept (--sessions, sniff)."""
        from operator import itemgetter

        from .dissect.listing import ListingReader, RenderingReader
        from .dissect.reader import Reader

        if records or reader_options.sessions:
            self.take, self.keep = self.render, self.filter
            return Reader(reader_options)
        self.take = itemgetter(1)
        if self.filter is None:
            if self.listing:
                return ListingReader(reader_options, self.colour)
            return RenderingReader(reader_options, self.render)
        # -Y: every packet becomes a record to test (no fast path); the others render as None.
        keep, render = self.filter, self.render
        self.keep = _rendered
        return RenderingReader(reader_options, lambda record: render(record) if keep(record) else None)

    @property
    def full(self):
        return self.limit is not None and self.count >= self.limit

    def packets(self, records):
        """What the reader made by reader() gives: records, or (frame, text) pairs."""
        if self.keep is not None:
            records = [record for record in records if self.keep(record)]
        if self.sessions:
            if self.matched is not None:  # -Y: the sessions shown are those with a packet that matched
                for record in records:
                    self.matched.add(record)
            self.count += len(records)
            return
        if self.limit is not None:
            records = records[:max(0, self.limit - self.count)]
        self.count += len(records)
        self.pending.extend(map(self.take, records))
        if len(self.pending) >= 4096:
            self.flush()

    def lines(self, lines):
        """Lines already rendered (by parallel workers)."""
        if self.filter is not None:
            lines = [line for line in lines if line is not None]
        if self.limit is not None:
            lines = lines[:max(0, self.limit - self.count)]
        self.count += len(lines)
        self.pending.extend(lines)
        if len(self.pending) >= 4096:
            self.flush()

    def flush(self):
        """Lines go out in batches: one write per line costs more than the rest of the line."""
        if self.pending:
            self.write("\n".join(self.pending) + "\n")
            self.pending.clear()

    def summaries(self, reader):
        self.flush()
        if not self.sessions:
            return
        summaries = reader.summaries()
        if self.matched is not None:
            summaries = [summary for summary in summaries if self.matched.keeps(summary)]
        for number, summary in enumerate(summaries, start=1):
            if self.as_json:
                if self.many:
                    summary["file"] = self.file
                self.write(self.jsonl.session_json(summary) + "\n")
            else:
                self.write(self.session_render.session_text(number, summary) + "\n\n")


def _rendered(pair):
    return pair[1] is not None


PROGRESS_EVERY = 50000  # datagrams (packets, with workers) between progress lines on a terminal


def _progress(frames, packets):
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{frames:,} frames, {packets:,} OpenVPN packets {_Reading.share()}")
        sys.stderr.flush()


class _Reading:
    """The capture file one reader is reading, opened here (on a terminal only) so that the
    progress line can say how far into it the reader is (of a .gz, in its compressed bytes)."""

    file = None
    size = 0

    @classmethod
    def open(cls, path):
        """The file at ``path``, or ``path`` itself where there is nothing to measure."""
        import os
        import stat

        cls.close()
        if not sys.stderr.isatty():
            return path
        try:
            file = open(path, "rb")
        except OSError:
            return path  # (the reader says why, as it would have)
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or not status.st_size:
            file.close()
            return path
        cls.file, cls.size = file, status.st_size
        return file

    @classmethod
    def close(cls):
        if cls.file is not None:
            cls.file.close()
            cls.file = None

    @classmethod
    def share(cls) -> str:
        """"(42% of the file) " read so far, or nothing."""
        try:
            return f"({min(100, 100 * cls.file.tell() // cls.size)}% of the file) " if cls.file is not None else ""
        except (OSError, ValueError):
            return ""


@main.command()
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("-r", "--read-file", "read_files", metavar="FILE", multiple=True,
              help="A capture to read, as tshark -r (the same as a FILE argument). Repeatable.")
@dissect_options
@click.option("--write-decrypted", "write_decrypted", metavar="OUT.pcap",
              help="Write the OpenVPN packets with tls-crypt removed, for Wireshark (never overwrites).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64),
              help="Processes sharing a capture's flows for the listing and --json (default: one per "
                   "CPU, up to 4, for files of 16 MB or more; 1: one process). The output is the same.")
def dissect(files, read_files, write_decrypted, jobs, **options):
    """Print the OpenVPN traffic in pcap/pcapng captures, Wireshark-style.
    A FILE of - reads a capture from standard input (tcpdump -w - | ovpndiag dissect -);
    gzip-compressed captures are read as they are.

    \b
    Exit status: 0 read, 1 a capture could not be read to its end (what was
    readable is printed first), 2 bad options or key files."""
    from .capture.pcapfile import CaptureError
    from .capture.transport import Transport, read_transport

    files = read_files + files
    if not files:
        raise UserError("no capture to read: give FILE... or -r FILE (- for standard input)")
    options["fields_output"] = _fields_output(options)
    try:
        reader_options = _reader_options(options)
        writer = None
        if write_decrypted:
            from .pcapout import PcapWriter

            writer = PcapWriter(write_decrypted)
    except _user_errors() as error:
        raise UserError(str(error)) from None
    output, failed, done = _Output(options, len(files) > 1), False, False
    output.watch_keys(reader_options.keys, options)
    _collect_less()
    try:
        for path in files:
            output.file, output.file_start = path, output.count
            if output.many and not options["as_json"] and not options["sessions"] and output.fields is None:
                output.write(f"==> {path} <==\n")
            workers = _workers(path, jobs, write_decrypted, options, output)
            if workers > 1:
                outcome = _dissect_parallel(path, reader_options, output, workers)
                if outcome is not None:
                    failed |= outcome
                    if output.full:
                        break
                    continue
            reader, transport = output.reader(reader_options, records=writer is not None), Transport()
            try:
                if output.frames is None:
                    datagrams = read_transport(_source(path), transport)
                else:  # -V shows each packet's frame and headers: keep the frames as they are read
                    from .capture import keptframes

                    datagrams = keptframes.read_transport(_source(path), output.frames, transport)
                for number, datagram in enumerate(datagrams, start=1):
                    if number == 1:
                        reader.first_time = transport.first_time  # times count from the first frame, as tshark's
                    records = reader.feed(datagram)
                    if writer is not None:
                        records = list(_write_decrypted(records, writer))
                    output.packets(records)
                    if output.full:
                        break
                    if number % PROGRESS_EVERY == 0:  # (the transport's counts are summed at the end)
                        _progress(datagram.frame, output.count)
                else:
                    output.packets(list(_write_decrypted(reader.finish(), writer)) if writer else reader.finish())
            except CaptureError as error:
                output.packets(reader.finish())
                output.flush()
                click.echo(f"ovpndiag: error: {error}", err=True)
                failed = True
            except BrokenPipeError:
                raise
            except OSError as error:
                click.echo(f"ovpndiag: error: {path}: {error.strerror or error}", err=True)
                failed = True
            output.summaries(reader)
            output.key_notes(path, reader.key_verdicts)
            _tally(output, transport, reader, path)
            if output.full:
                break
        done = True
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        if writer is not None:  # a failed run that wrote no packet leaves no file
            writer.close(failed=failed or not done)
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    sys.exit(1 if failed else 0)


class _StandardInput:
    """``dissect -``: standard input as a capture, named as the user wrote it."""

    name = "-"

    def __init__(self):
        from .capture.pcapfile import CaptureError

        if sys.stdin is None:
            raise CaptureError("-: standard input is closed")
        if sys.stdin.isatty():
            raise CaptureError("-: standard input is a terminal, not a capture "
                               "(pipe one in: tcpdump -w - ... | ovpndiag dissect -)")
        self.read = sys.stdin.buffer.read
        self.peek = getattr(sys.stdin.buffer, "peek", None)  # (to tell a gzip-compressed capture)


def _source(path):
    return _StandardInput() if path == "-" else _Reading.open(path)


def _collect_less():
    """Packets make many short-lived objects and almost no reference cycles (those that
    do, session summaries, live as long as their flow): the cyclic garbage collector
    runs less often, and never again over what the imports made (which forked workers
    then also share untouched). About 1% of a listing's instructions (valgrind)."""
    import gc

    gc.freeze()
    gc.set_threshold(10000, 50, 50)


def _workers(path, jobs, write_decrypted, options, output) -> int:
    """How many processes share this file: for the listing and JSON of a big enough
    file (or as -j asks), not for what needs every flow in one place."""
    import os.path

    if (jobs == 1 or write_decrypted or options["sessions"] or options["verbose"] or options["hex_dump"]
            or path == "-" or not os.path.isfile(path)):
        return 1  # (standard input, a pipe or a device cannot be read by several processes at once)
    from .dissect import parallel

    return jobs or parallel.default_jobs(path)


def _dissect_parallel(path, reader_options, output, jobs) -> Optional[bool]:
    """Dissect one file with ``jobs`` workers: True if the file could not be read to its
    end, None if there was nothing to share out early on or damage there (then one
    reader does the job, and says what is wrong)."""
    from .dissect import parallel

    _Reading.close()  # (no percentage: each worker reads the file on its own)
    first_time = parallel.first_frame_time(path)
    if first_time is None:
        return None
    workers = parallel.Workers(path, lambda: output.reader(reader_options), jobs, first_time)
    progress = PROGRESS_EVERY
    try:
        for lines in workers.lines():
            output.lines(lines)
            if output.full:
                break
            if output.count >= progress:
                _progress(workers.frames_read, output.count)
                progress += PROGRESS_EVERY
    finally:
        workers.close()
    output.flush()
    outcome = workers.outcome
    if outcome is None:  # stopped early (-c)
        return False
    if outcome.error:
        click.echo(f"ovpndiag: error: {outcome.error}", err=True)
    output.key_notes(path, outcome.key_verdicts)
    _tally_text(output, path, outcome.frames, outcome.tally, outcome.skipped)
    return outcome.error is not None


def _tally(output, transport, reader, path):
    """_tally_text for a file one reader read."""
    counts = transport.counts
    _tally_text(output, path, counts.frames, reader.tally, counts.skipped)


def _tally_text(output, path, frames, tally, skipped):
    """What a file held, every payload counted: in the --sessions report, and on a
    terminal; static-key traffic (never shown) is always said on stderr."""
    undecided, static = tally.get("undecided", 0), tally.get("static", 0)
    text = (f"{path}: {frames:,} frames, {output.count - output.file_start:,} OpenVPN packets"
            + (f" ({undecided:,} in flows too short to be sure of)" if undecided else "")
            + f"; skipped: {tally.get('other', 0):,} payloads of other protocols, "
            + (f"{static:,} static-key OpenVPN payloads, " if static else "")
            + f"{skipped:,} frames without UDP or TCP")
    if static:
        click.echo(f"ovpndiag: note: {path}: {static:,} payloads on an OpenVPN port are static-key (--secret) "
                   "traffic: it has no control channel, so there is nothing to dissect", err=True)
    if output.sessions and not output.as_json:
        output.write(text + "\n")
    elif sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text + "\n")  # over the progress line


def _write_decrypted(records, writer):
    """Pass records through, writing each packet with tls-crypt removed."""
    for record in records:
        data = record.data
        wire = record.decrypted
        if wire is not None:  # opened by a key: the plaintext in place of the ciphertext
            from .wirelayout import plain

            data = plain(wire, record.decoded_with, record.wkc_len or 0)
        writer.write_openvpn(record.time, record.src, record.sport, record.dst, record.dport,
                             record.transport, data)
        yield record


@main.command()
@click.option("-i", "--interface", required=True, help="Interface to listen on (needs root).")
@dissect_options
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Also save what was captured (never overwrites).")
@click.option("--buffer", "buffer_mib", type=click.IntRange(1, 4096), default=64, show_default=True, metavar="MIB",
              help="Kernel capture buffer, MiB: it holds the packets not yet read in a burst.")
@click.option("-f", "capture_filter", metavar="BPF",
              help="Capture filter (pcap-filter syntax, as tcpdump's): run in the kernel, so what it "
                   "rejects is never copied nor counted.")
def sniff(interface, duration, write_path, buffer_mib, capture_filter, **options):
    """Dissect OpenVPN traffic live on an interface; Ctrl-C (or SIGTERM) stops
    with a summary, after showing what was already captured.

    \b
    Exit status: 0 stopped (Ctrl-C, SIGTERM, -c or --duration), 1 the interface
    could not be read, 2 bad options or key files."""
    import math
    import time

    from .capture.live import CaptureFilterError, LiveError, compile_capture_filter, open_interface
    from .capture.transport import Transport

    try:
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise UserError(f"--duration must be a number of seconds above 0, not {duration}")
        options["fields_output"] = _fields_output(options)
        try:
            program = compile_capture_filter(capture_filter) if capture_filter else ()
        except CaptureFilterError as error:
            raise UserError(f"-f: {error}") from None
        reader_options = _reader_options(options)
        reader_options.sessions = True  # keep summaries for the closing line
        capture = open_interface(interface, buffer_mib, program)
    except LiveError as error:
        click.echo(f"ovpndiag: error: {error}", err=True)
        sys.exit(1)
    except _user_errors() as error:
        raise UserError(str(error)) from None
    try:
        writer = None
        if write_path:
            from .pcapout import PcapWriter

            writer = PcapWriter(write_path)
    except _user_errors() as error:
        capture.close()
        raise UserError(str(error)) from None
    click.echo(f"ovpndiag: listening on {interface} (UDP and TCP, {buffer_mib} MiB buffer); Ctrl-C stops", err=True)
    output, transport = _Output(options, False), Transport()
    output.write = _unbuffered_stdout()
    reader = output.reader(reader_options)
    signals = _StopOnSignals(capture)
    number, stamp = 0, 0.0
    try:
        for batch in capture.batches(duration):
            if not batch:  # quiet: flows waiting to be recognised are decided in time all the same
                output.packets(reader.tick(time.time()))
            for number, stamp, linktype, packet in batch:
                if output.frames is not None:
                    output.frames.keep(number, linktype, packet, len(packet))
                if writer is not None:
                    writer.write_ip(stamp, packet)
                for datagram in transport.feed(number, stamp, linktype, packet):
                    output.packets(reader.feed(datagram))
                if output.full:
                    break
            output.flush()  # live: show each block of packets as it comes
            sys.stdout.flush()
            if output.full:
                break
        for datagram in transport.flush(number, stamp):  # TCP bytes still held, and stream ends
            output.packets(reader.feed(datagram))
        output.packets(reader.finish())
        output.summaries(reader)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        stats = capture.stats()
        capture.close()
        if writer is not None:
            writer.close()
    sessions = reader.summaries()
    text = (f"{'interrupted: ' if signals.received else ''}{transport.counts.frames} frames, {output.count} OpenVPN "
            f"packets in {len(sessions)} session{'s' if len(sessions) != 1 else ''}"
            + (f", {reader.not_openvpn} other payloads skipped" if reader.not_openvpn else "")
            + f"; {stats.dropped} packets dropped by kernel")
    if stats.dropped:
        text += " (the capture buffer was full: a larger --buffer holds longer bursts)"
    if stats.unread and not output.full:  # (-c stops reading on purpose)
        how = "stopped at once by a second signal" if signals.received > 1 else "stopped before reading them"
        text += f"; {stats.unread} captured packets not read ({how})"
    click.echo(text, err=True)
    signals.restore()


def _unbuffered_stdout():
    """A write function for standard output straight to its file descriptor: when a
    signal handler runs during a long write to a full pipe, CPython 3.11's buffered
    writer loses part of what it was given (seen: 256 KiB of lines), and a stopping
    signal is what sniff expects while its reader lags."""
    import io
    import os

    stdout = sys.stdout
    try:
        descriptor = stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):  # not a real file (tests in-process)
        return stdout.write
    stdout.flush()
    encoding, errors = stdout.encoding or "utf-8", stdout.errors or "strict"

    def write(text):
        view = memoryview(text.encode(encoding, errors))
        while view:
            view = view[os.write(descriptor, view):]
    return write


class _StopOnSignals:
    """SIGINT and SIGTERM stop a live capture the same way: the first lets it show
    what the kernel already holds, the second stops it at once, a third is left to
    the signal's default action."""

    def __init__(self, capture):
        import signal

        self.capture, self.received = capture, 0
        self.previous = {number: signal.signal(number, self.handle) for number in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, number, _frame):
        import os
        import signal

        self.received += 1
        if self.received == 1:
            self.capture.stop()
        elif self.received == 2:
            self.capture.abandon()
        else:
            self.restore()
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)

    def restore(self):
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)
