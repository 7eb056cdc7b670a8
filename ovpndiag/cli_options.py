"""The command line's options, declared once and shared: probe and check
(``probe_options``), the staged handshake (``handshake_options``), dissect and
sniff (``dissect_options``), --color; and what the commands make of them: probe and
handshake settings, the dissect pipeline's keyword arguments, -Y and -T fields
checked at parsing.
"""

import click

from .cli_support import UserError

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


def with_options(command, options):
    """``command`` decorated with click ``options``, listed in the order --help shows them."""
    for option in reversed(options):
        command = option(command)
    return command


def colour_option(command):
    return click.option("--color", "--colour", "color", type=click.Choice(["auto", "always", "never"]),
                        default="auto", show_default=True,
                        help="Colour the output: auto is on a terminal unless NO_COLOR is set.")(command)


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
    return with_options(command, options)


def probe_settings(options):
    """ProbeSettings from the command line (and its --config profile)."""
    from . import settings

    return settings.probe_settings(
        host=options["host"], port=options["port"], proto=options["proto"], family=options["family"],
        timeout=options["timeout"], retries=options["retries"], retry_interval=options["retry_interval"],
        tls_auth=options["tls_auth"], key_direction=options["key_direction"], auth=options["auth"],
        tls_crypt=options["tls_crypt"], tls_crypt_v2=options["tls_crypt_v2"], config=options["config"])


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
        return with_options(command, options)
    return decorate


def handshake_settings(options):
    """HandshakeSettings from the command line (and its --config profile)."""
    from . import handshake_settings as settings

    return settings.handshake_settings(
        probe_settings(options), ca=options["ca"], cert=options["cert"], key=options["key"],
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


# how captures are read, for dissect, sniff and analyze alike
_CAPTURE_INPUT = (
    click.option("-p", "--port", "ports", type=click.IntRange(1, 65535), multiple=True,
                 help="Also read this port as OpenVPN (1194 always is; other ports are recognised "
                      "from their packets). Repeatable."),
    click.option("--wrapping", type=click.Choice(["none", "tls-auth", "tls-crypt", "tls-crypt-v2"]),
                 help="Override the wrapping inferred per flow."),
)


def dissect_options(command):
    """Options shared by dissect and sniff."""
    options = [
        *_CAPTURE_INPUT,
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
    return with_options(command, options)


def analyze_options(command):
    """analyze's options: dissect's input and keys - the server's here - and a key log."""
    options = [
        *_CAPTURE_INPUT,
        click.option("--auth", metavar="DIGEST", help="The server's tls-auth digest (--auth in its config)."),
        click.option("--tls-auth", "tls_auth", metavar="FILE", help="The server's tls-auth key."),
        click.option("--key-direction", type=click.Choice(["0", "1", "none"]),
                     help="The server's tls-auth key direction (default: its config's, else unknown)."),
        click.option("--tls-crypt", "tls_crypt", metavar="FILE", help="The server's tls-crypt key."),
        click.option("--tls-crypt-v2", "tls_crypt_v2", metavar="FILE", help="The server's tls-crypt-v2 key."),
        click.option("--config", metavar="SERVER.conf",
                     help="Take the keys, key-direction and auth from the server's configuration."),
        click.option("--keylog", metavar="FILE",
                     help="An NSS key log (ovpndiag handshake --keylog writes one): read inside TLS."),
        click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per session (no table)."),
        click.option("-j", "--jobs", type=click.IntRange(1, 64),
                     help="Processes sharing a capture's flows (default: one per CPU, up to 4, for files "
                          "of 16 MB or more; 1: one process). The output is the same."),
    ]
    return with_options(command, options)


def _display_filter(_context, _parameter, text):
    """-Y compiled once, at parsing: a bad filter stops before any file is read."""
    if text is None:
        return None
    from .dissect.displayfilter import FilterError, compile_filter

    try:
        return compile_filter(text)
    except FilterError as error:
        raise UserError(f"-Y: {error}") from None


def fields_output(options):
    """-T fields / -e / -E checked, -T json|ek folded into --json, and -x refused where
    the output would drop it."""
    from .render.fields import FieldsError, check_names, parse_options

    if options["output_format"] in ("json", "ek"):
        options["as_json"] = True
    if options["output_format"] != "fields":
        if options["fields"] or options["field_settings"]:
            raise UserError("-e and -E need -T fields")
        if options.get("hex_dump") and (options["as_json"] or options.get("sessions")):
            # (JSON and the session summaries have no place for it: it would be dropped unsaid)
            raise UserError("-x dumps bytes under each packet's line or -V tree: not with --json or --sessions")
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


def pipeline_options(options) -> dict:
    """dissect.pipeline.open's (and sniff's) key, port and reader arguments from the options."""
    return dict(ports=options["ports"], wrapping=options["wrapping"], auth=options["auth"],
                tls_auth=options["tls_auth"], tls_crypt=options["tls_crypt"], tls_crypt_v2=options["tls_crypt_v2"],
                key_direction=options["key_direction"], config=options["config"], tls_details=options["verbose"])


def try_key_file(settings, options):
    """probe --try-keys: every combination for the key file given."""
    from .keys import read_key
    from .settings import SettingsError
    from .trykeys import try_keys as try_every

    path = options["tls_auth"] or options["tls_crypt"] or options["tls_crypt_v2"]
    if not path:
        raise SettingsError("--try-keys needs a key file: --tls-auth, --tls-crypt or --tls-crypt-v2 FILE")
    try:
        return try_every(settings, read_key(path))
    except TypeError as error:
        raise SettingsError(str(error)) from None
