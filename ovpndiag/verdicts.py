"""The diagnosis vocabulary: one name for each way a handshake ends.

The live client (``ovpndiag handshake``/``check --stage``, ovpndiag.client) and the
capture analyzer (``ovpndiag analyze``) both say *why* a handshake failed with
these exact strings, so the same failure has the same name live and in a capture.
Each ``Verdict`` carries:

- ``stage``: the stage it is decided at - the one that did not complete (for ``ok``
  and the certificate warnings the last one, ``data``; ``None`` when no stage can
  be named, e.g. ``incomplete``). Stages are ``STAGES`` (reset, tls, auth, push, data).
- ``meaning``: one line for people.
- ``advice``: what to try, most likely first.
- ``state``: the monitoring state it stands for (``state_of``); the server
  certificate's remaining days can raise it (``certificate_state``).
- ``live`` / ``capture``: whether the live client and the analyzer can reach it
  (the key trials need the server's key in a capture; a web/2FA prompt is only seen live).

The probe's older reset-only verdicts (ovpndiag.probe) keep their names, except
``no-reply``, which is ``server-silent`` here (``from_probe``).
Nothing here imports anything heavy: ``check`` loads it.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

STAGES = ("reset", "tls", "auth", "push", "data")
OK_STATE, WARNING_STATE, CRITICAL_STATE, UNKNOWN_STATE = 0, 1, 2, 3  # as ovpndiag.monitoring


@dataclass(frozen=True)
class Verdict:
    name: str
    stage: Optional[str]
    meaning: str
    advice: Tuple[str, ...]
    state: int = CRITICAL_STATE
    live: bool = True
    capture: bool = True


_ALL = [
    # --- success ---------------------------------------------------------------------------
    Verdict("ok", "data", "the handshake completed and data flowed both ways", (), OK_STATE),
    Verdict("certificate-expiring", "data",
            "the handshake works, but the server certificate ends within the warning window",
            ("renew the server certificate (and restart the server with it) before it expires: clients "
             "refuse an expired one with 'certificate verify failed'",),
            WARNING_STATE),
    Verdict("certificate-expired", "tls",
            "the server certificate has expired (not checked against a CA: a client with --ca refuses it)",
            ("renew the server certificate and restart the server with it",
             "if the certificate looks valid, check the clocks: the server's and this machine's"),
            live=True, capture=True),
    Verdict("certificate-not-yet-valid", "tls",
            "the server certificate is not valid yet (its notBefore is in the future)",
            ("check this machine's clock and the clock of the machine that issued the certificate",),
            live=True, capture=True),
    # --- reset stage -------------------------------------------------------------------------
    Verdict("unresolvable", "reset", "the host name could not be resolved",
            ("check the host name for a typo, and that DNS answers for it (e.g. with dig)",),
            UNKNOWN_STATE, capture=False),
    Verdict("port-closed", "reset",
            "nothing listens there: ICMP port unreachable (UDP) or the connection was refused (TCP)",
            ("check the port and protocol (UDP or TCP) in the server's configuration: proto, port",
             "check that the OpenVPN server is running (systemctl status openvpn-server@...)")),
    Verdict("unreachable", "reset", "the network says the host cannot be reached (ICMP unreachable)",
            ("check routing and firewalls between here and the server",), capture=False),
    Verdict("no-connection", "reset", "the TCP connection was never accepted (no answer to SYN)",
            ("a firewall probably drops the connection: check it, and that the server listens on TCP",)),
    Verdict("connection-closed", "reset", "the server closed the TCP connection without an OpenVPN answer",
            ("the server may use other tls-auth/tls-crypt settings, or have reached max-clients: read "
             "its log",)),
    Verdict("connection-reset", "reset", "the server reset the TCP connection",
            ("the server may use other tls-auth/tls-crypt settings, or something else listens on the "
             "port: read its log",)),
    Verdict("server-silent", "reset",
            "the client's resets were never answered, and nothing on the wire says why",
            ("the port may be filtered by a firewall, or the server down",
             "the server may use tls-auth/tls-crypt: it drops resets without the right key silently; "
             "give the key (--tls-auth/--tls-crypt/--tls-crypt-v2 or --config) and try "
             "'ovpndiag probe --try-keys'",
             "the server may rate-limit new sessions (--connect-freq-initial): try again later")),
    Verdict("no-tls-auth", "reset",
            "the client sent no HMAC, but the server uses tls-auth: it drops such resets silently",
            ("add the server's tls-auth key to the client (tls-auth ta.key 1, or <tls-auth> and "
             "key-direction 1)",), live=False),
    Verdict("wrong-key", "reset",
            "the client's packets verify under no key direction or digest of the server's key: another key",
            ("give the client the server's own tls-auth/tls-crypt key (or a tls-crypt-v2 client key made "
             "with the server's key)",), live=False),
    Verdict("wrong-key-direction", "reset",
            "the client's packets verify only with the server's own key direction: the client uses the "
            "wrong one",
            ("set key-direction 1 on the client when the server has key-direction 0 (or tls-auth ta.key 1)",),
            live=False),
    Verdict("wrong-digest", "reset",
            "the client's HMAC verifies with another digest than the server's --auth",
            ("use the server's --auth digest on the client (auth SHA256, ...)",), live=False),
    Verdict("not-openvpn", "reset", "something answered, but not OpenVPN",
            ("check the port: another service listens there",)),
    Verdict("bad-authentication", "reset",
            "the server answered, but its reply's HMAC or tag does not verify with our key",
            ("the key direction or digest differ from the server's: 'ovpndiag probe --try-keys' finds "
             "those it answers",)),
    Verdict("wrong-reply", "reset", "the server answered, but not as to our reset (wrong session or opcode)",
            ("another client may share the address, or a middlebox rewrites packets: run again and "
             "capture (--write)",)),
    # No one stage: over UDP a full server answers the reset and drops the ClientHello (tls);
    # over TCP it closes the connection before answering the reset (reset).
    Verdict("max-clients", None,
            "the server takes no new client: it answers resets but drops every ClientHello (UDP), or closes "
            "every new connection before reading it (TCP) - it has as many clients as its max-clients allows",
            ("raise max-clients on the server, or look for stale sessions filling it (its log: 'would "
             "exceed maximum number of clients')",
             "UDP: a server over its --connect-freq limit of new sessions looks the same (its log: 'would "
             "exceed new connection frequency limit'): try again later",
             "TCP: a connection limit in front of the server (a firewall's connlimit, a proxy) looks the same"),
            capture=False),
    # --- tls stage ---------------------------------------------------------------------------
    Verdict("client-hello-rejected", "tls",
            "the server stopped after the client's ClientHello, or refused it: no common TLS version or cipher suite",
            ("compare tls-version-min/tls-version-max and tls-cipher/tls-ciphersuites on both sides "
             "(the server's log: 'TLS error: Unsupported protocol', 'no shared cipher')",
             "an old client (TLS 1.2 or older) against a server with tls-version-min 1.3 fails so",
             "unless the message says a second session's ClientHello was answered, the server may also "
             "be full (max-clients) or have stopped: read its log")),
    Verdict("server-certificate-rejected", "tls",
            "the client refused the server's certificate (untrusted CA, expired, not yet valid, name or "
            "key usage wrong)",
            ("give the CA that signed the server certificate (--ca, or <ca> in the profile)",
             "if it has expired, renew it; check both clocks",
             "verify-x509-name must match the server certificate's subject (or CN with 'name')",
             "remote-cert-tls server needs a certificate with the TLS Web Server Authentication EKU "
             "(easy-rsa build-server-full makes one)")),
    Verdict("client-certificate-rejected", "tls",
            "the server refused the client's certificate (untrusted CA, revoked, expired, or none given)",
            ("use a client certificate signed by the server's CA (the server's log: 'certificate verify "
             "failed')",
             "the certificate may be revoked: check the server's crl-verify file",
             "if none was given, the server requires one: --cert and --key (or <cert>/<key> in the profile)")),
    Verdict("tls-error", "tls", "TLS failed: an alert, garbage inside TLS, or a broken record",
            ("read the alert in the message and the server's log; capture with --write --keylog to see "
             "inside TLS",)),
    Verdict("server-stopped", None,
            "the server stopped answering half-way through the handshake (nothing on the wire says why)",
            ("the server may be overloaded, stopped or restarting: read its log and try again",)),
    # --- auth stage --------------------------------------------------------------------------
    Verdict("stopped-after-tls", "auth",
            "TLS completed, but no data channel followed, and the reason is inside TLS (not readable here)",
            ("read the server's log for this client: AUTH_FAILED, a cipher or option mismatch",
             "a capture with our --keylog shows the messages inside TLS")),
    # push, not auth: AUTH_FAILED answers PUSH_REQUEST on the wire; key-method 2 has passed by then
    Verdict("auth-failed", "push",
            "the server refused the session: AUTH_FAILED (username/password, auth script or plugin)",
            ("check the username and password (--auth-user-pass: the user on line 1, the password on "
             "line 2)",
             "read the server's log: the auth script or plugin says why it refused")),
    Verdict("auth-pending", "push",  # (like AUTH_FAILED, it comes while the client asks for the push)
            "the server waits for an extra authentication (web or 2FA, AUTH_PENDING): a check cannot "
            "complete it",
            ("complete it as a user would, or monitor only up to --stage tls, or use an account "
             "without the extra step for monitoring",), WARNING_STATE, capture=False),
    # --- push stage --------------------------------------------------------------------------
    Verdict("no-shared-cipher", "push",
            "the server found no data-channel cipher in common: AUTH_FAILED,Data channel cipher "
            "negotiation failed (no shared cipher)",
            ("make --data-ciphers on both sides share a cipher (AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305 "
             "is 2.6's default)",
             "an old server may need data-ciphers-fallback or cipher for clients without negotiation")),
    Verdict("push-timeout", "push", "the server never answered PUSH_REQUEST with PUSH_REPLY",
            ("the server may be busy authenticating (a slow auth script or plugin): raise -t",
             "read the server's log for this client")),
    Verdict("server-restart", "push",
            "the server told the client to reconnect (RESTART): it is restarting, or pushed a restart",
            ("try again in a moment; if it persists, read the server's log",), WARNING_STATE, capture=False),
    Verdict("server-halted", "push", "the server told the client to stop (HALT)",
            ("the server is shutting down, or an administrator killed this client: read its log",),
            capture=False),
    # --- data stage --------------------------------------------------------------------------
    Verdict("data-one-way", "data", "the data channel carried packets one way only",
            ("the data-channel keys or cipher may not match: compare data-ciphers, and read the "
             "server's log ('AEAD Decrypt error', 'Authenticate/Decrypt packet error')",
             "a firewall may drop one direction of the data channel")),
    Verdict("data-keys-mismatch", "data",
            "the server's data packets do not decrypt with the keys agreed (or ours not with its)",
            ("a key-derivation or cipher mismatch: compare data-ciphers and the protocol-flags pushed "
             "(tls-ekm); report it with a --write capture",), capture=False),
    Verdict("echo-unanswered", "data",
            "the data channel works (the server's packets decrypt), but the ICMP echo got no answer",
            ("the target may not answer pings, or the server may not route to it: try --ping-target "
             "with the server's tunnel address (route-gateway)",), WARNING_STATE, capture=False),
    # --- captures only ------------------------------------------------------------------------
    Verdict("incomplete", None,
            "the capture starts or ends inside the session and shows no failure",
            ("capture from before the client connects until it gives up or the tunnel is up",),
            UNKNOWN_STATE, live=False),
]

VERDICTS = {verdict.name: verdict for verdict in _ALL}
PROBE_VERDICTS = {"no-reply": "server-silent"}  # the probe's names that differ from ours


def get(name: str) -> Verdict:
    """The Verdict of that name; an unknown name is a programming error (KeyError)."""
    return VERDICTS[name]


def from_probe(probe_verdict: str) -> str:
    """The probe's reset verdict (ovpndiag.probe) in this vocabulary."""
    return PROBE_VERDICTS.get(probe_verdict, probe_verdict)


def state_of(name: str) -> int:
    """The monitoring state a verdict stands for (0 OK .. 3 UNKNOWN); unknown names are UNKNOWN."""
    verdict = VERDICTS.get(name)
    return verdict.state if verdict else UNKNOWN_STATE


def certificate_state(days_left: Optional[float], warning_days: float = 30, critical_days: float = 7,
                      not_yet_valid: bool = False) -> Tuple[int, Optional[str]]:
    """(state, verdict or None) from the server certificate's days left: CRITICAL when
    expired, not yet valid or within ``critical_days``; WARNING within ``warning_days``."""
    if not_yet_valid:
        return CRITICAL_STATE, "certificate-not-yet-valid"
    if days_left is None:
        return OK_STATE, None
    if days_left < 0:
        return CRITICAL_STATE, "certificate-expired"
    if days_left <= critical_days:
        return CRITICAL_STATE, "certificate-expiring"
    if days_left <= warning_days:
        return WARNING_STATE, "certificate-expiring"
    return OK_STATE, None
