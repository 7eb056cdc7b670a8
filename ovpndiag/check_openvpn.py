"""``check_openvpn``: the classic plugin's command line, run by ovpndiag's probe.

Existing service definitions keep working: the same options and defaults
(``-t`` is TCP here, ``--timeout`` counts per UDP packet, ``--retrycount`` is
the number of resets sent, ``--tls-auth`` uses key-direction 1 and
``--tls-auth-inverse`` 0, ``--digest-key-client`` alone signs the resets and
leaves the reply's HMAC unchecked). What changes is what the old plugin got
wrong: the output follows ``ovpndiag check`` (status line with perfdata), an
invalid HMAC is CRITICAL (the old plugin said WARNING, yet no client could
connect), bad options or keys are UNKNOWN instead of CRITICAL, and whatever
happens (even output that cannot be written) ends in one line, never a traceback.
"""

import binascii
import math
import sys

import click

from . import __version__
from .cli_support import PluginCommand, plugin, plugin_print, run_plugin

PROG = "check_openvpn"


def _static_key_from_hmac_keys(client_hex, server_hex):
    """check_openvpn took raw HMAC keys: place them where key-direction 1 uses them."""
    from .keys import StaticKey
    from .settings import SettingsError

    try:
        client, server = binascii.unhexlify(client_hex), binascii.unhexlify(server_hex)
    except (binascii.Error, ValueError):
        raise SettingsError("--digest-key-client/--digest-key-server must be hex") from None
    if not 16 <= len(client) <= 64 or not 16 <= len(server) <= 64:
        raise SettingsError("--digest-key-client/--digest-key-server must be 16 to 64 bytes of hex")
    slot = lambda key: key.ljust(64, b"\0")  # noqa: E731 - unused tail of the 64-byte slot
    return StaticKey(bytes(64) + slot(server) + bytes(64) + slot(client), "--digest-key-client/-server")


def _unverified_replies():
    from .wrap import TLSAuth

    class UnverifiedReplies(TLSAuth):
        """tls-auth with only the client's HMAC key: the probe signs with it and
        reads the reply without verifying its HMAC (it says so in its checks)."""

        checks_replies = False

    return UnverifiedReplies


def main():
    """The console entry point: nothing it meets ends in a traceback."""
    run_plugin(command, PROG)


@click.command(cls=PluginCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name=f"{PROG} (ovpndiag)", message="%(prog)s %(version)s")
@click.argument("host")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=1194, show_default=True)
@click.option("-t", "--tcp", is_flag=True, help="Use TCP instead of UDP.")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait, per packet over UDP.")
@click.option("--digest", default="sha1", show_default=True, help="HMAC digest.")
@click.option("--digest-size", type=int, help="HMAC size in bytes (must match the digest).")
@click.option("--digest-key-client", metavar="HEX", help="Client HMAC key.")
@click.option("--digest-key-server", metavar="HEX", help="Server HMAC key, to validate the reply.")
@click.option("--tls-auth", "tls_auth", metavar="FILE", help="tls-auth key file (key-direction 1).")
@click.option("--tls-auth-inverse", is_flag=True, help="Use key-direction 0 with --tls-auth.")
@click.option("--retrycount", type=int, default=3, show_default=True, help="UDP resets to send.")
@click.option("--no-validation", is_flag=True, help="Any reply is OK.")
@plugin
def command(host, port, tcp, timeout, digest, digest_size, digest_key_client, digest_key_server, tls_auth,
         tls_auth_inverse, retrycount, no_validation):
    """Check that an OpenVPN server answers a client reset (check_openvpn compatible)."""
    from .check import evaluate
    from .layers import HMAC_SIZES
    from .probe import probe
    from .render.nagios import plugin_output
    from .settings import MAX_SECONDS, SettingsError, probe_settings
    from .wrap import TLSAuth

    if retrycount < 1:
        raise SettingsError("--retrycount must be at least 1")
    if not (math.isfinite(timeout) and timeout > 0):
        raise SettingsError(f"--timeout must be a number of seconds more than 0 (per UDP packet), not {timeout}")
    if timeout * retrycount > MAX_SECONDS:
        raise SettingsError(f"--timeout {timeout:g} s times --retrycount {retrycount} is more than a day")
    if tls_auth and (digest_key_client or digest_key_server):
        raise SettingsError("--tls-auth cannot go with --digest-key-client/--digest-key-server")
    name = digest.upper().replace("-", "")
    if name not in HMAC_SIZES:
        raise SettingsError(f"digest '{digest}' is not one OpenVPN uses ({', '.join(HMAC_SIZES)})")
    if digest_size is not None and digest_size != HMAC_SIZES[name]:
        raise SettingsError(f"--digest-size {digest_size} does not match {name} ({HMAC_SIZES[name]} bytes): "
                            "OpenVPN always sends the whole HMAC")
    proto = "tcp" if tcp else "udp"
    settings = probe_settings(host=host, port=port, proto=proto,
                              timeout=timeout * (retrycount if proto == "udp" else 1), retries=retrycount - 1,
                              retry_interval=timeout, tls_auth=tls_auth,
                              key_direction="0" if tls_auth_inverse else "1", auth=name,
                              validate=not no_validation)
    if digest_key_server and not digest_key_client:
        raise SettingsError("--digest-key-server alone would send an unsigned reset: give --digest-key-client "
                            "too (the server's key only validates the reply)")
    if digest_key_client:
        # Alone, as the classic plugin allowed: resets are signed, the reply is read unverified.
        key = _static_key_from_hmac_keys(digest_key_client, digest_key_server or digest_key_client)
        settings.wrapper = (TLSAuth if digest_key_server else _unverified_replies())(key, 1, name)
    result = probe(settings)
    outcome = evaluate(result, timeout=settings.timeout, max_attempts=retrycount if proto == "udp" else 1)
    plugin_print(plugin_output(outcome), PROG)
    sys.exit(outcome.state)
