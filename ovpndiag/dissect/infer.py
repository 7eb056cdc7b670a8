"""Which wrapping a flow's control packets have, inferred from the packets.

Nothing on the wire says it, so every candidate layout - none, tls-auth with
each HMAC size, tls-crypt - is tried on each control packet, and the ones that
read as sense survive: replay packet-ids small and net time near the capture's
clock, resets with the ACKs, message packet-id and empty payload they must
have, ACKs that name the other side's session id. Decided per session (a capture
may mix SHA1 and SHA512 servers, one client port may try several) as soon as one
candidate is left, or after a few packets by preference; the renegotiations of a
session seen from its middle get an inference of their own. A key, when given,
settles it by verifying.
"""

from struct import Struct
from typing import Optional

from ..protocol import CARRIES_WKC, CLIENT_RESETS, CONTROL_OPCODES, DATA_OPCODES, EARLY_NEG_START, PLAIN, \
    SERVER_RESETS, Wrapping
from ..wirelayout import control_layout
from .packetdecode import decode_packet

TLS_CRYPT = Wrapping("tls-crypt")
TLS_CRYPT_V2 = Wrapping("tls-crypt-v2")
# Most likely first: ties are broken in this order.
CANDIDATES = [Wrapping.tls_auth(size) for size in (20, 32, 64, 16, 28, 48)] + [TLS_CRYPT, PLAIN]

MAX_SKEW = 5 * 365 * 86400  # a peer's clock this far off is not a clock: the bytes are something else
# A capture clock outside 2000-2100 judges no peer's clock (a device that never set its own, a
# pcapng if_tsoffset gone wrong): then net time is not looked at.
CLOCK_FROM, CLOCK_UNTIL = 946684800, 4102444800
REPLAY_LIMIT = 1 << 20  # replay packet-ids count packets of one key; they do not get this high
DECIDE_AFTER = 6  # control packets looked at before ties are broken by preference


def plausible(fields, peer_session_id: Optional[int], now: float) -> bool:
    """Do these fields (a Record), read under one wrapping, make sense for a real packet?"""
    if fields.malformed is not None:
        return False
    replay = fields.replay_packet_id
    if replay is not None:
        if not (0 < replay < REPLAY_LIMIT or EARLY_NEG_START < replay < EARLY_NEG_START + REPLAY_LIMIT):
            return False
        if CLOCK_FROM < now < CLOCK_UNTIL and abs(fields.net_time - now) > MAX_SKEW:
            return False
    acks = fields.acks
    if acks is None:
        return True  # encrypted: nothing more to check
    opcode = fields.opcode_value
    if opcode in CLIENT_RESETS and (acks or fields.message_packet_id or fields.payload_len):
        return False  # a client reset acknowledges nothing and carries nothing
    if opcode in SERVER_RESETS and (fields.message_packet_id != 0 or acks != [0]):
        return False  # a server reset is packet 0 and acknowledges the client's packet 0
    if acks and peer_session_id is not None and fields.remote_session_id != peer_session_id:
        return False
    if (fields.message_packet_id or 0) >= REPLAY_LIMIT:
        return False
    return True


def readable_as(data: bytes, wrapping: Wrapping, peer_session_id: Optional[int], now: float) -> bool:
    """Does this control packet read as sense under this wrapping? (The cheap checks first:
    its size, then its replay packet-id and net time, and only then a decode.)"""
    facts = _FACTS.get(wrapping)
    if facts is None:
        layout = control_layout(wrapping)
        facts = _FACTS[wrapping] = (layout.shortest, _replay_offset(layout))
    if len(data) < facts[0] or _rules_out_at(data, facts[1], now):
        return False
    return plausible(decode_packet(data, wrapping), peer_session_id, now)


def candidates_for(kind: Optional[str] = None, digest: Optional[str] = None):
    """The candidates left by ``--wrapping`` and ``--auth`` (None: not given)."""
    if digest:
        return [Wrapping.tls_auth(digest)]
    if kind == "tls-auth":
        return [w for w in CANDIDATES if w.kind == "tls-auth"]
    if kind in ("none", "tls-crypt", "tls-crypt-v2"):
        return [Wrapping(kind)]
    return list(CANDIDATES)


class WrappingInference:
    """Per session (and, mid-session, for its renegotiations): feed control packets
    until ``decided`` is set."""

    def __init__(self, candidates=None, renegotiation: bool = False):
        self.renegotiation = renegotiation  # for key ids 1-7 (their wrapping may differ from key 0's)
        self.candidates = list(candidates or CANDIDATES)
        self.decided = self.candidates[0] if len(self.candidates) == 1 else None
        self.seen = 0

    def observe(self, data: bytes, peer_session_id: Optional[int], now: float) -> Optional[Wrapping]:
        if self.decided is not None:
            return self.decided
        opcode = data[0] >> 3 if data else 0
        if opcode in CARRIES_WKC:  # only tls-crypt-v2 has these
            self.decided = TLS_CRYPT_V2
            return self.decided
        survivors = [w for w in self.candidates if readable_as(data, w, peer_session_id, now)]
        self.seen += 1
        if survivors:
            self.candidates = survivors
        if len(self.candidates) == 1 or self.seen >= DECIDE_AFTER:
            self.decided = self.candidates[0]
        return self.decided

    def best_guess(self) -> Wrapping:
        """At the end of a flow that never decided: the most likely survivor."""
        if self.decided is None:
            self.decided = self.candidates[0]
        return self.decided


_REPLAY_AND_TIME = Struct("!II").unpack_from
_FACTS = {}  # Wrapping -> (fewest bytes of a control packet, offset of its replay packet-id or None)


def _replay_offset(layout) -> Optional[int]:
    """Where _REPLAY_AND_TIME reads replay packet-id and net time under this layout (None:
    they are not there, side by side, so the quick check is not made)."""
    replay, net_time = layout.fields.get("replay_packet_id"), layout.fields.get("net_time")
    if replay is None or net_time is None or (replay[1], net_time[0], net_time[1]) != (4, replay[0] + 4, 4):
        return None
    return replay[0]
_WRAPPED_AS_GIVEN = CONTROL_OPCODES.difference(CARRIES_WKC)  # (10 and 11 are always tls-crypt-v2)


def _clock_rules_out(data: bytes, wrapping: Wrapping, now: float) -> bool:
    """The replay packet-id and net time checks of plausible(), on the two words alone:
    most candidates fail them, and reading two words costs far less than a decode.
    (Only a quick no: whatever passes is still decoded and checked in full.)"""
    return _rules_out_at(data, _replay_offset(control_layout(wrapping)), now)


def _rules_out_at(data: bytes, offset: Optional[int], now: float) -> bool:
    """_clock_rules_out with the replay packet-id's offset worked out."""
    if offset is None or len(data) < offset + 8 or data[0] >> 3 not in _WRAPPED_AS_GIVEN:
        return False
    replay, net_time = _REPLAY_AND_TIME(data, offset)
    if not (0 < replay < REPLAY_LIMIT or EARLY_NEG_START < replay < EARLY_NEG_START + REPLAY_LIMIT):
        return True
    return CLOCK_FROM < now < CLOCK_UNTIL and abs(net_time - now) > MAX_SKEW


def session_id_of(data: bytes) -> Optional[int]:
    """A control packet's sender's session id: where it is in every wrapping."""
    start, end = _SESSION_ID or _session_id_span()
    if len(data) >= end and data[0] >> 3 not in DATA_OPCODES:
        return int.from_bytes(data[start:end], "big")
    return None


_SESSION_ID = None


def _session_id_span():
    global _SESSION_ID
    offset, size = control_layout(PLAIN).fields["session_id"]
    _SESSION_ID = offset, offset + size
    return _SESSION_ID
