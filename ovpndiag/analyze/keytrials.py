"""Key trials: why a server dropped a client's unanswered packets, tried with the server's key.

A server with tls-auth, tls-crypt or tls-crypt-v2 drops every client packet that does not
verify, without a word on the wire. Given the server's key (and, when known, its ``--auth``
digest and key-direction), the client's first unanswered control packet tells why:

- It is a plain reset (14 bytes: no HMAC, no tag; it acknowledges nothing, as an
  unanswered client has nothing to acknowledge) -> ``no-tls-auth`` (the evidence says "no
  tls-crypt" or "no tls-crypt-v2" for those servers).
- tls-auth: the HMAC is tried with both HMAC keys of the static key (bytes 64.. and
  192..) and every digest (MD5 ... SHA512; the HMAC's size is what differs on the wire).
  A client signs with HMAC key 1 under key-direction 1, with key 0 under key-direction 0
  or none; a server checks with key 1 under key-direction 0, with key 0 under 1 or none
  (OpenVPN's crypto.c, key_direction_state_init). Nothing verifies -> ``wrong-key``;
  it verifies only with the HMAC key the server does not check with -> ``wrong-key-direction``
  (the client uses the server's own direction); with the server's HMAC key but another digest
  than the server's -> ``wrong-digest``; with the server's HMAC key and digest -> no verdict,
  the key is right (``key_fine``: the cause is elsewhere - a rate limit, the server down...).
  When both direction and digest are wrong the verdict is ``wrong-key-direction`` and the
  evidence names the digest too.
- Not given, the server's digest is not judged: whatever digest verifies is reported as the
  client's. Not given, the server's key-direction is not judged either: a client signing with
  HMAC key 1 (key-direction 1) is taken as right, since servers conventionally use
  key-direction 0 (OpenVPN's sample server.conf: ``tls-auth ta.key 0``); a client signing with
  key 0 (key-direction 0 or none) gets no verdict but ``possible = "wrong-key-direction"`` and
  evidence saying it is wrong for a server with key-direction 0 - give the server's to decide.
- tls-crypt: the tag is checked with the client's half of the key (the client sends with
  key 1, the server with key 0: tls_crypt.c) -> ``wrong-key`` when it fails.
- tls-crypt-v2: the client's wrapped key (WKc, in its opcode 10 reset) must unwrap with
  the server's tls-crypt-v2 key, and the packet's tag verify with the client key inside
  -> ``wrong-key`` when either fails.
- A client using another wrapping than the server (tls-crypt against tls-auth, a tls-crypt-v2
  reset against a tls-crypt server, ...) is ``wrong-key``, and the evidence names what it uses.
- A packet cut by the capture's snap length, or too short for the wrapping and not a plain
  reset, is not judged (no verdict, ``checked`` False). Key bytes never appear in evidence.

``ServerKeys.from_options`` takes the keys once; ``trial`` is called once per unanswered
session (not per packet) and imports the wrappers (and ``cryptography``, for tls-crypt) only
when called.
"""

from typing import NamedTuple, Optional

from ..protocol import (CARRIES_WKC, HMAC_SIZES, MIN_PACKET, PLAIN, MalformedPacket, Opcode, Wrapping, digest_name,
                        wkc_length)

_PLAIN_RESETS = (int(Opcode.P_CONTROL_HARD_RESET_CLIENT_V1), int(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2))
_DIRECTIONS = {None: None, 0: 0, 1: 1, "0": 0, "1": 1, "none": "none", "bidirectional": "none"}
# The HMAC key (0 or 1) a server checks client packets with, by its key-direction.
_SERVER_CHECKS_WITH = {0: 1, 1: 0, "none": 0}
_SERVER_DIRECTION_TEXT = {0: "key-direction 0", 1: "key-direction 1", "none": "no key-direction, bidirectional"}
# What a client signing with HMAC key 0 or 1 has set.
_CLIENT_DIRECTION_TEXT = {0: "key-direction 0 (or none)", 1: "key-direction 1"}
# Why the client's HMAC key is the wrong one, by the server's key-direction.
_WRONG_DIRECTION_TEXT = {
    0: "the half of the key the server itself signs with (it has key-direction 0): the client uses the server's "
       "own direction and needs key-direction 1",
    1: "the half of the key the server itself signs with (it has key-direction 1): the client uses the server's "
       "own direction and needs key-direction 0",
    "none": "not the one the server checks with (it has no key-direction: both ways use HMAC key 0): the client "
            "needs no key-direction either"}


class KeyTrial(NamedTuple):
    verdict: Optional[str]  # a name from ovpndiag.verdicts, or None: the key is right, or not judged
    evidence: str  # one line for people (no frame number: the caller cites the frame)
    key_fine: bool = False  # the packet verifies as the server expects (as far as its settings are given)
    possible: Optional[str] = None  # a verdict that holds under the usual server setting (key-direction 0)
    checked: bool = True  # False: the packet could not be tried (cut, too short, no key for it)


class ServerKeys:
    """The server's control-channel keys and settings, for ``trial``."""

    __slots__ = ("tls_auth", "tls_crypt", "v2_server", "v2_client", "digest", "direction")

    def __init__(self, tls_auth=None, tls_crypt=None, v2_server=None, v2_client=None,
                 digest: Optional[str] = None, direction=None):
        self.tls_auth, self.tls_crypt, self.v2_server, self.v2_client = tls_auth, tls_crypt, v2_server, v2_client
        self.digest = None if digest is None else digest_name(digest)  # (ValueError for an unknown one)
        if direction not in _DIRECTIONS:
            raise ValueError(f"key direction must be 0, 1 or none, not {direction!r}")
        self.direction = _DIRECTIONS[direction]  # 0, 1, "none" (bidirectional) or None (not given)

    @classmethod
    def from_options(cls, keyring, digest: Optional[str] = None, server_direction=None) -> "ServerKeys":
        """From a ``dissect.keyring.KeyRing`` (the keys given), ``--auth`` and the server's
        key-direction: 0, 1 (int or str), "none" for bidirectional, None when not given."""
        return cls(keyring.tls_auth, keyring.tls_crypt, keyring.v2_server, keyring.v2_client, digest,
                   server_direction)

    @property
    def empty(self) -> bool:
        return not (self.tls_auth or self.tls_crypt or self.v2_server or self.v2_client)

    def __repr__(self):  # names only, never key bytes
        kinds = [k for k, v in (("tls-auth", self.tls_auth), ("tls-crypt", self.tls_crypt),
                                ("tls-crypt-v2 server", self.v2_server), ("tls-crypt-v2 client", self.v2_client)) if v]
        return f"ServerKeys({', '.join(kinds) or 'none'}, digest={self.digest}, direction={self.direction})"


def trial(packet: bytes, transport: str, server: ServerKeys, cut: int = 0) -> KeyTrial:
    """Why the server dropped ``packet``, the client's first unanswered control packet as
    captured (without TCP framing; the rules are the same over UDP and TCP). ``cut``: bytes
    of it the capture's snap length cut off (``Datagram.cut``)."""
    packet = bytes(packet)
    if server.empty:
        return KeyTrial(None, "no server key given: the client's packets were not tried", checked=False)
    if len(packet) < MIN_PACKET:
        return KeyTrial(None, f"the client's packet ({len(packet)} bytes) is too short for an OpenVPN control "
                              "packet: not judged", checked=False)
    if cut:
        return KeyTrial(None, f"the capture cut the client's packet ({cut} of its {len(packet) + cut} bytes "
                              "missing): its HMAC or tag cannot be checked", checked=False)
    trials = []
    if server.tls_auth is not None:
        trials.append(_tls_auth(packet, server))
    if server.tls_crypt is not None:
        trials.append(_tls_crypt(packet, server.tls_crypt))
    if server.v2_server is not None:
        trials.append(_tls_crypt_v2(packet, server.v2_server))
    if not trials:
        return KeyTrial(None, "a tls-crypt-v2 client key says nothing about the server's: give the server's "
                              "tls-crypt-v2 key to try the client's packets", checked=False)
    # Several keys given (one server uses one): the one the packet verifies with tells most.
    return min(trials, key=lambda t: (not t.key_fine, t.verdict in (None, "wrong-key", "no-tls-auth"),
                                      not t.checked))


def _is_plain_reset(packet) -> bool:
    """A client reset without wrapping, acknowledging nothing (exactly the plain layout)."""
    from .. import wirelayout

    if not packet or packet[0] >> 3 not in _PLAIN_RESETS:
        return False
    layout = wirelayout.control_layout(PLAIN)
    return len(packet) > layout.header and packet[layout.header] == 0 and \
        len(packet) == layout.header + 1 + layout.after_acks[packet[0] >> 3][0].size


def _min_size(wrapping) -> int:
    from .. import wirelayout

    return wirelayout.control_layout(wrapping).header


def _uses_v2(packet) -> bool:
    return bool(packet) and packet[0] >> 3 in CARRIES_WKC


def _hmac_slots(packet, key):
    """(HMAC key, digest) pairs of ``key`` the packet's tls-auth HMAC verifies with."""
    from ..wrap import TLSAuth

    # a receiver with key-direction 1 checks with HMAC key 0, with key-direction 0 key 1
    return [(slot, digest) for digest in HMAC_SIZES for slot in (0, 1)
            if TLSAuth(key, 1 - slot, digest).verify(packet)]


def _tls_auth(packet, server) -> KeyTrial:
    found = _hmac_slots(packet, server.tls_auth)
    if not found:
        return _no_hmac(packet, server.tls_auth)
    expected = _SERVER_CHECKS_WITH.get(server.direction)  # None: not given
    right_slot = [f for f in found if expected is None or f[0] == expected]
    both = [f for f in right_slot if server.digest is None or f[1] == server.digest]
    if both:
        return _hmac_fine(both[0], server)
    slot, digest = (right_slot or found)[0]
    said = f"the client's HMAC verifies with the server's tls-auth key, {_CLIENT_DIRECTION_TEXT[slot]} and {digest}"
    if right_slot:
        return KeyTrial("wrong-digest", f"{said}: the server expects --auth {server.digest} "
                                        f"({HMAC_SIZES[server.digest]}-byte HMAC), the client uses {digest} "
                                        f"({HMAC_SIZES[digest]} bytes)")
    also = "" if server.digest is None or digest == server.digest else \
        f"; its digest differs too (the server's --auth is {server.digest})"
    return KeyTrial("wrong-key-direction", f"{said}: {_WRONG_DIRECTION_TEXT[server.direction]}{also}")


def _hmac_fine(found, server) -> KeyTrial:
    slot, digest = found
    said = f"the client's HMAC verifies with the server's tls-auth key, {_CLIENT_DIRECTION_TEXT[slot]} and {digest}"
    digest_note = "" if server.digest is not None else " (the server's --auth is not given: digest not checked)"
    if server.direction is not None:
        return KeyTrial(None, f"{said}, as the server ({_SERVER_DIRECTION_TEXT[server.direction]}) expects"
                              f"{digest_note}: the key is right, the cause is elsewhere", key_fine=True)
    if slot == 1:
        return KeyTrial(None, f"{said}, as a server with key-direction 0 (the usual; the server's is not given) "
                              f"expects{digest_note}: the key is right, the cause is elsewhere", key_fine=True)
    return KeyTrial(None, f"{said}{digest_note}: right for a server with key-direction 1 or none, wrong for one "
                          "with key-direction 0 (the usual); the server's key-direction is not given "
                          "(--key-direction or --config decide it)", possible="wrong-key-direction")


def _no_hmac(packet, key) -> KeyTrial:
    """No HMAC of ``key`` verifies: a plain reset, another wrapping, or another key."""
    from ..wrap import TLSCrypt

    if _is_plain_reset(packet):
        return KeyTrial("no-tls-auth", f"the client's reset is plain ({len(packet)} bytes, no HMAC): the client has "
                                       "no tls-auth but the server has")
    if _uses_v2(packet):
        return KeyTrial("wrong-key", f"the client sends a tls-crypt-v2 reset (opcode {packet[0] >> 3}, with a "
                                     "wrapped client key): it uses tls-crypt-v2, the server tls-auth")
    if len(packet) < _min_size(Wrapping.tls_auth(min(HMAC_SIZES.values()))):
        return KeyTrial(None, f"the client's packet ({len(packet)} bytes) is too short for a tls-auth HMAC and "
                              "not a plain reset: not judged", checked=False)
    if TLSCrypt(key, "server").verify(packet):
        return KeyTrial("wrong-key", "the client's packet opens as tls-crypt with the server's tls-auth key: the "
                                     "client uses tls-crypt, the server tls-auth")
    return KeyTrial("wrong-key", "the client's HMAC verifies under no key-direction and no digest (MD5 to SHA512) "
                                 "of the server's tls-auth key: the client has another key")


def _tls_crypt(packet, key) -> KeyTrial:
    from ..wrap import TLSCrypt

    if _uses_v2(packet):
        return KeyTrial("wrong-key", f"the client sends a tls-crypt-v2 reset (opcode {packet[0] >> 3}, with a "
                                     "wrapped client key): it uses tls-crypt-v2, the server tls-crypt")
    if _is_plain_reset(packet):
        return KeyTrial("no-tls-auth", f"no tls-crypt: the client's reset is plain ({len(packet)} bytes, no tag): "
                                       "the client has no tls-crypt but the server has")
    if len(packet) >= _min_size(Wrapping("tls-crypt")) and TLSCrypt(key, "server").verify(packet):
        return KeyTrial(None, "the client's tls-crypt tag verifies with the server's tls-crypt key: the key is "
                              "right, the cause is elsewhere", key_fine=True)
    found = _hmac_slots(packet, key)
    if found:
        slot, digest = found[0]
        return KeyTrial("wrong-key", f"the client's packet carries a tls-auth HMAC made with the server's tls-crypt "
                                     f"key ({_CLIENT_DIRECTION_TEXT[slot]}, {digest}): the client uses tls-auth, "
                                     "the server tls-crypt")
    if len(packet) < _min_size(Wrapping("tls-crypt")):
        return KeyTrial(None, f"the client's packet ({len(packet)} bytes) is too short for a tls-crypt tag and not "
                              "a plain reset: not judged", checked=False)
    return KeyTrial("wrong-key", "the client's tls-crypt tag does not verify with the server's tls-crypt key: the "
                                 "client has another key")


def _tls_crypt_v2(packet, server_key) -> KeyTrial:
    from .. import wirelayout
    from ..wrap import TLSCrypt, TLSCryptV2Server, WrapError

    if _is_plain_reset(packet):
        return KeyTrial("no-tls-auth", f"no tls-crypt-v2: the client's reset is plain ({len(packet)} bytes, no "
                                       "tag, no wrapped client key): the client has no tls-crypt-v2 but the server has")
    if not _uses_v2(packet):
        return KeyTrial("wrong-key", f"the client's reset (opcode {packet[0] >> 3 if packet else '-'}) carries no "
                                     "wrapped client key: it uses tls-auth or tls-crypt, the server tls-crypt-v2")
    start = wirelayout.control_layout(Wrapping("tls-crypt-v2")).header
    try:
        size = wkc_length(packet, start)
    except MalformedPacket as error:
        return KeyTrial(None, f"the client's tls-crypt-v2 reset is damaged ({error}): not judged", checked=False)
    server = TLSCryptV2Server(server_key)
    try:
        kc = server.unwrap_client_key(packet[len(packet) - size:]).kc
    except WrapError:
        return KeyTrial("wrong-key", f"the client's wrapped key (WKc, {size} bytes) does not unwrap with the "
                                     "server's tls-crypt-v2 key: the client key was made with another server key")
    try:
        TLSCrypt(kc, "server").unwrap(packet, size)
    except WrapError:
        return KeyTrial("wrong-key", "the client's wrapped key unwraps with the server's tls-crypt-v2 key, but its "
                                     "packet's tag does not verify with the key inside: the client's key file is "
                                     "damaged or mixed up")
    return KeyTrial(None, "the client's wrapped key unwraps with the server's tls-crypt-v2 key and its tag "
                          "verifies: the key is right, the cause is elsewhere", key_fine=True)
