"""Is this flow OpenVPN? Evidence gathered from its own packets, one at a time.

A capture rarely starts at a flow's first packet: tcpdump is started on a busy
server while tunnels run. So a flow is recognised from whatever part of a
session it shows, and from nothing but its own packets (the decision must not
depend on other flows, so that parallel workers decide as one reader does):

- a client or server hard reset that reads as sense under some wrapping (the
  lone, unanswered client reset is the evidence for "TLS key negotiation failed");
- control packets (any key id) whose session ids answer each other, or stay the
  same, both ways;
- a data stream: P_DATA_V2 with one peer-id and key id, or P_DATA_V1, whose AEAD
  packet-ids count up in each direction (on OpenVPN's port, one peer-id and key id
  suffice: a CBC cipher hides the packet-id).

On OpenVPN's port, or a port given with ``-p``, the flow is OpenVPN whatever it
shows (the user said so): recognition there only tells TLS-mode OpenVPN from
static-key (``--secret``) traffic, whose packets start with an HMAC and so show
opcodes that do not exist. Elsewhere a flow that shows none of the above within
``LIMIT`` of its packets is another protocol.
"""

from typing import Optional

from ..protocol import CARRIES_WKC, CLIENT_RESETS, CONTROL_OPCODES, OPCODES, SERVER_RESETS, Opcode
from .packetdecode import shortest
from .infer import CANDIDATES, TLS_CRYPT_V2, readable_as, session_id_of

LIMIT = 12  # packets a flow gets to show what it is
DATA_STREAK = 3  # data packets of one stream, each one's packet-id above the last, that recognise a flow
PACKET_ID_STEP = 1 << 16  # AEAD packet-ids of one direction climb by less than this between packets
STATIC_AFTER = 2  # impossible opcodes that make a flow on an OpenVPN port static-key traffic

OPENVPN, OTHER, STATIC = "openvpn", "other", "static"
UNDECIDED = "undecided"  # looked like OpenVPN, but too little of it to be sure: shown, and counted apart
_CONTROL = CONTROL_OPCODES
_P_DATA_V2 = int(Opcode.P_DATA_V2)


def fits(data: bytes, peer_session_id: Optional[int], time: float, candidates=CANDIDATES) -> bool:
    """Does this control packet read as sense under some wrapping?"""
    if data[0] >> 3 in CARRIES_WKC:
        candidates = (TLS_CRYPT_V2,)
    return any(readable_as(data, w, peer_session_id, time) for w in candidates)


# A client reset carries no ACK and no payload: its size alone says which wrappings it can be under.
_CLIENT_RESET_SIZES = {}
for _wrapping in CANDIDATES:
    _CLIENT_RESET_SIZES.setdefault(shortest(_wrapping) + (5 if _wrapping.is_tls_crypt else 4), []).append(_wrapping)


class Recognition:
    """The evidence one flow has shown so far; ``observe`` says what it is once it knows.

    ``client`` is then the sender the evidence shows to be the client (a reset's
    sender, or the ephemeral-port side), or None when nothing tells."""

    __slots__ = ("known_port", "seen", "impossible", "evidence", "client", "session_ids",
                 "data_first", "data_streak", "packet_ids")

    def __init__(self, known_port: bool):
        self.known_port = known_port
        self.seen = 0
        self.impossible = 0  # packets whose first byte names no opcode
        self.evidence = 0  # packets that read as OpenVPN, short of recognising the flow
        self.client = None
        self.session_ids = {}  # sender -> first session id seen from it
        self.data_first = None  # (first byte, peer-id) of the flow's first data packet
        self.data_streak = 0
        self.packet_ids = {}  # sender -> latest AEAD packet-id of its data packets

    def observe(self, sender: str, data: bytes, time: float) -> Optional[str]:
        """OPENVPN, OTHER, STATIC or UNDECIDED once this packet settles it; None while it does not."""
        self.seen += 1
        opcode = data[0] >> 3 if data else 0
        if opcode not in OPCODES:
            self.impossible += 1
            if not self.known_port:
                return OTHER
            if self.impossible >= STATIC_AFTER and not self.evidence:
                return STATIC
        elif opcode in _CONTROL:
            verdict = self._control(sender, data, opcode, time)
            if verdict:
                return verdict
        elif self._data(sender, data, opcode):
            return OPENVPN
        if self.seen >= LIMIT:
            return self.give_up()
        return None

    def give_up(self) -> str:
        """No more time to look: what the evidence so far says."""
        if self.known_port:
            return STATIC if self.impossible >= STATIC_AFTER and not self.evidence else OPENVPN
        return UNDECIDED if self.evidence else OTHER

    def _control(self, sender, data, opcode, time):
        session_id = session_id_of(data)
        if session_id is None:
            return None
        self.session_ids.setdefault(sender, session_id)
        other = "server" if sender == "client" else "client"
        peer = self.session_ids.get(other)
        if not data[0] & 7 and opcode in CLIENT_RESETS and (
                # On OpenVPN's port a reset's size is enough (the wrapping inference reads it next);
                # static-key packets (HMAC, IV, cipher blocks) never have these sizes.
                len(data) in _CLIENT_RESET_SIZES if self.known_port and opcode != 10 else
                fits(data, None, time, _CLIENT_RESET_SIZES.get(len(data), ()))):
            self.client = sender
            return OPENVPN
        if opcode in SERVER_RESETS and fits(data, None, time):
            self.client = other
            return OPENVPN
        if peer is not None and fits(data, peer, time):
            return OPENVPN  # answers the other side's session (or carries no ACK to say)
        if not fits(data, None, time):
            return None
        self.evidence += 1
        if self.known_port:
            return OPENVPN
        return None

    def _data(self, sender, data, opcode) -> bool:
        """A data packet: True when the flow's data stream is long enough to be sure."""
        if opcode == _P_DATA_V2:
            if len(data) < 8:
                return False
            mark, packet_id = data[:4], int.from_bytes(data[4:8], "big")
        else:
            if len(data) < 5:
                return False
            mark, packet_id = data[:1], int.from_bytes(data[1:5], "big")
        if self.data_first is None:
            self.data_first = mark
        elif mark != self.data_first:
            return False
        if self.known_port:  # the same peer-id and key id twice is enough (CBC hides the packet-id)
            self.data_streak += 1
            return self.data_streak >= 2
        # Elsewhere a packet counts when it follows its sender's last with a higher packet-id.
        last = self.packet_ids.get(sender)
        self.packet_ids[sender] = packet_id
        if last is None or not 0 < packet_id - last < PACKET_ID_STEP:
            return False
        self.data_streak += 1
        self.evidence += 1
        return self.data_streak >= DATA_STREAK - 1
