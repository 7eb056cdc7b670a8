"""What OpenVPN says inside the control channel's TLS, once a key log decrypts it.

``inner_events(client_chunks, server_chunks, keylog) -> [InnerEvent, ...]`` (sorted by
frame): chunks are one session's key id 0 TLS byte stream per direction, as
``[(frame, bytes), ...]`` in message packet-id order without retransmissions
(``tlsdecrypt`` says more). Each event is ``InnerEvent(frame, sender, kind, text,
details)``; ``frame`` is the frame that completed what it tells, ``sender`` "client" or
"server", ``text`` one line for people, ``details`` a dict for the verdict:

``tls``           decryption worked: "TLS 1.3 TLS_AES_256_GCM_SHA384, 11 records decrypted"
                  (details: version, suite, records)
``alert``         a decrypted alert: "fatal unknown_ca" (details: level, description)
``certificate``   one per certificate of a decrypted Certificate message, leaf first:
                  "subject CN=..., issuer CN=..., valid 2026-...Z to 2056-...Z"
                  (details: subject, issuer, not_before, not_after - RFC 4514, ISO 8601;
                  TLS 1.2 sends certificates in clear: dissect's TLS details have those)
``finished``      the side's decrypted Finished: its TLS handshake is done
``key-method``    OpenVPN's key-method 2 message (ssl.c key_method_2_write: uint32 0,
                  uint8 2, key source, then uint16-length strings: options, username,
                  password, peer-info): "key-method 2, options 'V4,...', peer-info
                  IV_VER=2.6.14 IV_CIPHERS=..., username given" (details: options,
                  peer_info (the non-identifying IV_ values), peer_info_keys, username_given)
``control``       a NUL-terminated control message: PUSH_REQUEST, PUSH_REPLY,...,
                  AUTH_FAILED[,reason], AUTH_PENDING, INFO..., RESTART, HALT, EXIT ...
                  (details: keyword, reason - the text after the first comma)
``undecryptable`` why some records stay encrypted: no secrets for this session's client
                  random, a CBC suite, a record failing its tag (a key log of another
                  session), ...

Never in an event: the password, the key source randoms, an auth-token (PUSH_REPLY's
``auth-token``/``auth-token-user`` show as "[hidden]"), a challenge response (CR_RESPONSE),
a username's value, or any key.
"""

from typing import List, NamedTuple, Optional

from .keylog import KeyLog
from .tlsdecrypt import ALERT, APPLICATION_DATA, FINISHED, HANDSHAKE, decrypt

CERTIFICATE = 11
KEY_METHOD_2 = b"\x00\x00\x00\x00\x02"
CLIENT_KEY_SOURCE = 48 + 32 + 32      # pre-master, random1, random2 (the server sends no pre-master)
MAX_TEXT = 2000
# peer-info values that say what the peer is and speaks (others may identify a person or machine)
SHOWN_PEER_INFO = ("IV_VER", "IV_PLAT", "IV_PROTO", "IV_NCP", "IV_CIPHERS", "IV_MTU", "IV_TCPNL", "IV_GUI_VER",
                   "IV_SSO", "IV_LZ4", "IV_LZ4v2", "IV_LZO_STUB", "IV_COMP_STUB", "IV_COMP_STUBv2", "IV_BS64DL")
HIDDEN_MESSAGES = ("CR_RESPONSE",)    # the rest of these messages is a secret


class InnerEvent(NamedTuple):
    frame: int
    sender: str
    kind: str
    text: str
    details: Optional[dict] = None


def inner_events(client_chunks, server_chunks, keylog: KeyLog) -> List[InnerEvent]:
    result = decrypt(client_chunks, server_chunks, keylog)
    events: List[InnerEvent] = []
    first = next((plain for plain in result.content if plain.encrypted), None)
    if first is not None:
        events.append(InnerEvent(first.frame, first.sender, "tls",
                                 f"{result.version} {result.suite}, {result.decrypted} records decrypted",
                                 {"version": result.version, "suite": result.suite, "records": result.decrypted}))
    streams = {"client": _AppData("client"), "server": _AppData("server")}
    for plain in result.content:
        if not plain.encrypted:
            continue
        if plain.content_type == ALERT:
            events.extend(_alerts(plain))
        elif plain.content_type == HANDSHAKE:
            events.extend(_handshake(plain))
        elif plain.content_type == APPLICATION_DATA:
            events.extend(streams[plain.sender].feed(plain.frame, plain.data))
    events.extend(InnerEvent(p.frame, p.sender, "undecryptable", p.text) for p in result.problems)
    events.sort(key=lambda event: event.frame)
    return events


def _alerts(plain) -> List[InnerEvent]:
    from ..client.tlslayer import ALERTS

    out = []
    data = plain.data
    for pos in range(0, len(data) - 1, 2):
        level = {1: "warning", 2: "fatal"}.get(data[pos], f"level {data[pos]}")
        description = ALERTS.get(data[pos + 1], f"alert {data[pos + 1]}")
        out.append(InnerEvent(plain.frame, plain.sender, "alert", f"{level} {description}",
                              {"level": level, "description": description}))
    return out


def _handshake(plain) -> List[InnerEvent]:
    kind = plain.data[0]
    if kind == FINISHED:
        return [InnerEvent(plain.frame, plain.sender, "finished",
                           f"{plain.sender} Finished: its TLS handshake is done")]
    if kind != CERTIFICATE:
        return []
    from ..dissect.tls import certificate_chain   # (dissect's certificate reader; one definition)

    chain = certificate_chain(plain.data[4:])
    if chain is None:
        return [InnerEvent(plain.frame, plain.sender, "certificate", "a Certificate message that does not parse",
                           {"problem": "certificate list lengths do not add up"})]
    if not chain:
        return [InnerEvent(plain.frame, plain.sender, "certificate", "an empty Certificate message (no certificate)",
                           {"empty": True})]
    out = []
    for facts in chain:
        text = (facts["problem"] if "problem" in facts else
                f"subject {facts['subject']}, issuer {facts['issuer']}, "
                f"valid {facts['not_before']} to {facts['not_after']}")
        out.append(InnerEvent(plain.frame, plain.sender, "certificate", text, facts))
    return out


class _AppData:
    """One side's decrypted application data: its key-method 2 message (the first record:
    OpenVPN writes it whole), then NUL-terminated text messages."""

    def __init__(self, sender: str):
        from ..client.push import MessageReader

        self.sender = sender
        self.first = True
        self.reader = MessageReader()

    def feed(self, frame: int, data: bytes) -> List[InnerEvent]:
        if self.first:
            self.first = False
            if data.startswith(KEY_METHOD_2):
                return [self._key_method(frame, data)]
        return [self._control(frame, message) for message in self.reader.feed(data)]

    def _key_method(self, frame: int, data: bytes) -> InnerEvent:
        from ..client.keymethod import KeyMethodError, parse_server_message

        if self.sender == "client":   # the client's key source has a 48-byte pre-master more than the server's
            data = data[:5] + data[5 + 48:]
        try:
            message = parse_server_message(data)
        except KeyMethodError as error:
            return InnerEvent(frame, self.sender, "key-method", f"key-method 2 message that does not parse: {error}",
                              {"problem": str(error)})
        info = message.peer_info
        shown = {key: info[key] for key in SHOWN_PEER_INFO if key in info}
        named = " ".join(f"{key}={shown[key]}" for key in ("IV_VER", "IV_CIPHERS") if key in shown)
        keys = list(info)
        text = (f"key-method 2, options '{message.options}', peer-info "
                + (f"{named} ({', '.join(keys)})" if named else (", ".join(keys) or "none"))
                + f", username {'given' if message.username else 'none'}")
        return InnerEvent(frame, self.sender, "key-method", text[:MAX_TEXT],
                          {"options": message.options, "peer_info": shown, "peer_info_keys": keys,
                           "username_given": bool(message.username)})

    def _control(self, frame: int, message: str) -> InnerEvent:
        keyword, _, rest = message.partition(",")
        if keyword == "PUSH_REPLY":
            rest = ",".join(_hide_secret_option(option) for option in rest.split(","))
        elif keyword in HIDDEN_MESSAGES:
            rest = "[hidden]" if rest else ""
        text = keyword + ("," + rest if rest else "")
        return InnerEvent(frame, self.sender, "control", text[:MAX_TEXT],
                          {"keyword": keyword, "reason": rest[:MAX_TEXT]})


def _hide_secret_option(option: str) -> str:
    from ..client.push import SECRET_OPTIONS

    name = option.split(" ", 1)[0]
    return f"{name} [hidden]" if name in SECRET_OPTIONS else option
