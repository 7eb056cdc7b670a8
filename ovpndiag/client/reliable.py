"""The control channel's reliability layer (OpenVPN's reliable.c, client side).

``ControlChannel`` turns a byte stream (our TLS records) into numbered control
packets and back:

- our packets get message packet-ids from 1 (0 was the hard reset), are kept
  until the server ACKs them and are sent again when it does not: after a
  timeout that doubles on each try, or at once when the server ACKs a later
  one ("fast retransmit", as OpenVPN 2.6 does after 3 later ACKs);
- the server's packets are ACKed (piggybacked on our next control packet, or
  in a P_ACK_V1), duplicates are dropped (and ACKed again: our ACK was lost),
  packets that arrive early wait until the gap is filled, and their payloads
  come out in message packet-id order;
- every packet is built and read through the project's Scapy layers
  (``ovpndiag.layers``) and wrapped/unwrapped by the session's wrapper
  (``ovpndiag.wrap``: none, tls-auth, tls-crypt, tls-crypt-v2). The usual
  shapes go through ``PlainCodec``: one struct per shape, read off the
  layers' field lists by ``ovpndiag.wirelayout`` (a Scapy build or dissection
  costs 60-100 us, a dozen of them a fifth of a loopback handshake); anything
  else through Scapy itself.

No I/O here: ``outgoing(now)`` says what to send, ``receive(bytes, now)`` takes
what came; the session moves the bytes. Over TCP nothing is retransmitted
(TCP does it), as OpenVPN does.
"""

import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..layers import EARLY_NEG_START, OpenVPNAck, OpenVPNControl, OpenVPNReset, from_wire
from ..protocol import MAX_ACKS, OPCODES, PLAIN, first_byte

P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1, P_ACK_V1 = 3, 4, 5
P_CONTROL_HARD_RESET_CLIENT_V2, P_CONTROL_HARD_RESET_SERVER_V2 = 7, 8
P_CONTROL_HARD_RESET_CLIENT_V3, P_CONTROL_WKC_V1 = 10, 11

# TLS bytes per control packet: OpenVPN keeps whole control packets under its
# --tls-mtu (1250 by default); this leaves room for the largest wrapping
# (tls-auth SHA512: 64 + 8 bytes), 4 ACKs and the WKc-less headers.
MAX_PAYLOAD = 1100
CONTROL_ACKS = 4  # acks piggybacked on a control packet (OpenVPN sends at most 4)
ACK_V1_ACKS = 8  # in a P_ACK_V1
SEND_WINDOW = 6  # unacknowledged packets in flight (OpenVPN's TLS_RELIABLE_N_SEND_BUFFERS)
RECEIVE_WINDOW = 12  # how far ahead of the next expected packet we keep (TLS_RELIABLE_N_REC_BUFFERS)
MIN_RTO, MAX_RTO, INITIAL_RTO = 0.2, 4.0, 0.5
# A lone P_ACK_V1 waits this long for a packet of ours to ride on (the server's next
# message usually follows at once); its retransmission timer is 2 s, so nothing is lost.
ACK_DELAY = 0.002
# ... unless this many of the server's packets wait for it: a 2.6 server sends at most 6
# unacknowledged (TLS_RELIABLE_N_SEND_BUFFERS), so a certificate flight of more packets
# would stall for ACK_DELAY; ACKed by halves, it never stops.
ACK_AT_ONCE = 3
NUDGE_ACKS = 3


class ProtocolError(Exception):
    """The server sent something a control channel cannot carry on with."""


@dataclass
class _Outgoing:
    packet_id: int
    opcode: int
    payload: bytes
    first_sent: float = 0.0
    sent: int = 0  # how many times
    due: float = 0.0  # when to send (again)
    later_acks: int = 0  # ACKs of later packets seen since it was last sent


@dataclass
class Received:
    """One packet from the server, as read."""

    opcode: int
    key_id: int
    session_id: int
    acks: List[int]
    message_packet_id: Optional[int]
    payload: bytes
    packet: object  # the Scapy layer (plain layout); None when read by PlainCodec
    tlvs: list = field(default_factory=list)
    remote_session_id: Optional[int] = None

    @property
    def opcode_name(self) -> str:
        return OPCODES.get(self.opcode, f"opcode {self.opcode}")


class ControlChannel:
    def __init__(self, wrapper, session_id: int, proto: str = "udp", clock=time.monotonic):
        self.wrapper = wrapper
        self.session_id = session_id
        self.remote_session_id: Optional[int] = None
        self.proto = proto
        self.clock = clock
        self.v3 = wrapper.wrapping.kind == "tls-crypt-v2"
        self.replay_packet_id = EARLY_NEG_START if self.v3 else 0
        self.net_time = int(time.time())
        self.next_packet_id = 1
        self.unacked: Dict[int, _Outgoing] = {}
        self.queue: List[_Outgoing] = []  # waiting for room in the send window
        self.to_ack: List[int] = []  # received, not yet acknowledged
        self.ack_owed_since: Optional[float] = None
        self.nudges = 0  # P_ACK_V1s to send at once: a gap in the server's packets
        self.recent_acks: List[int] = []  # acknowledged lately: re-sent, as ACKs get lost too
        self.expected = 1  # next message packet-id to hand on
        self.early: Dict[int, bytes] = {}
        self.resend_wkc = False  # tls-crypt-v2 early negotiation: the first control packet carries the WKc
        self.srtt: Optional[float] = None
        self.rto = INITIAL_RTO
        self.retransmissions = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.ignored: List[str] = []  # packets that could not be read, why

    # --- sending --------------------------------------------------------------------

    def reset(self) -> _Outgoing:
        """Queue the client's hard reset (message packet-id 0)."""
        opcode = P_CONTROL_HARD_RESET_CLIENT_V3 if self.v3 else P_CONTROL_HARD_RESET_CLIENT_V2
        entry = _Outgoing(0, opcode, b"")
        self.unacked[0] = entry
        return entry

    def send_bytes(self, data: bytes):
        """Queue TLS bytes, cut into control packets."""
        for start in range(0, len(data), MAX_PAYLOAD):
            opcode = P_CONTROL_V1
            if self.next_packet_id == 1 and self.resend_wkc:
                opcode = P_CONTROL_WKC_V1
            self.queue.append(_Outgoing(self.next_packet_id, opcode, data[start:start + MAX_PAYLOAD]))
            self.next_packet_id += 1

    @property
    def idle(self) -> bool:
        """Nothing of ours is waiting for an ACK or for room to be sent."""
        return not self.unacked and not self.queue

    def next_due(self) -> Optional[float]:
        """When ``outgoing`` next has something to send (None: nothing pending)."""
        dues = [e.due for e in self.unacked.values()]
        if self.nudges or (self.queue and len(self.unacked) < SEND_WINDOW):
            return self.clock()
        if self.to_ack and self.remote_session_id is not None:
            dues.append(self.ack_owed_since + (ACK_DELAY if len(self.to_ack) < ACK_AT_ONCE else 0.0))
        return min(dues) if dues else None

    def outgoing(self, acks=True) -> List[bytes]:
        """The wire packets to send now: new and timed-out control packets (with
        ACKs piggybacked), or a P_ACK_V1 when only ACKs are owed - after ACK_DELAY,
        at once for ACK_AT_ONCE packets or more, or with ``acks="now"``; none with
        ``acks=False``."""
        now = self.clock()
        while self.queue and len(self.unacked) < SEND_WINDOW:
            entry = self.queue.pop(0)
            self.unacked[entry.packet_id] = entry
        packets = []
        for entry in sorted(self.unacked.values(), key=lambda e: e.packet_id):
            if entry.sent and (self.proto == "tcp" or entry.due > now):
                continue
            if entry.sent:
                self.retransmissions += 1
            packets.append(self._build(entry))
            entry.sent += 1
            entry.first_sent = entry.first_sent or now
            entry.later_acks = 0
            # Exponential backoff per packet, as reliable.c does.
            entry.due = now + min(MAX_RTO, self.rto * (2 ** (entry.sent - 1)))
        if acks and self.to_ack and self.remote_session_id is not None \
                and (acks == "now" or len(self.to_ack) >= ACK_AT_ONCE or now >= self.ack_owed_since + ACK_DELAY):
            packets.append(self._build_ack())
        while self.nudges and self.remote_session_id is not None:
            self.nudges -= 1
            packets.append(self._build_ack())
        return packets

    def _take_acks(self, limit):
        """ACKs owed first, then recently sent ones again (they may have been lost)."""
        acks = self.to_ack[:limit]
        self.to_ack = self.to_ack[limit:]
        if not self.to_ack:
            self.ack_owed_since = None
        for old in self.recent_acks:
            if len(acks) >= limit:
                break
            if old not in acks:
                acks.append(old)
        self.recent_acks = (acks + [a for a in self.recent_acks if a not in acks])[:ACK_V1_ACKS]
        return acks

    def _build(self, entry: _Outgoing) -> bytes:
        if entry.packet_id == 0:
            plain = OpenVPNReset(opcode=P_CONTROL_HARD_RESET_CLIENT_V2, session_id=self.session_id,
                                 message_packet_id=0, wrapping=PLAIN)
        else:
            # The server learns us only when we ACK its reset: every control packet
            # carries ACKs while any are owed or recent (a lost ACK is re-sent).
            acks = self._take_acks(CONTROL_ACKS) if self.remote_session_id is not None else []
            fields = dict(opcode=P_CONTROL_V1, session_id=self.session_id, acks=acks,
                          message_packet_id=entry.packet_id)
            if acks:
                fields["remote_session_id"] = self.remote_session_id
            plain = CODEC.build(OpenVPNControl, fields, entry.payload)
        raw = plain if isinstance(plain, bytes) else build(plain, entry.payload)
        if entry.opcode != raw[0] >> 3:  # V3 reset and WKC_V1: same plain layout, another opcode
            raw = bytes([entry.opcode << 3]) + raw[1:]
        return self._wrap(raw)

    def _build_ack(self) -> bytes:
        acks = self._take_acks(ACK_V1_ACKS)
        fields = dict(opcode=P_ACK_V1, session_id=self.session_id, acks=acks,
                      remote_session_id=self.remote_session_id)
        return self._wrap(CODEC.build(OpenVPNAck, fields))

    def _wrap(self, raw: bytes) -> bytes:
        self.replay_packet_id += 1
        self.packets_sent += 1
        return self.wrapper.wrap(raw, self.replay_packet_id, self.net_time)

    # --- receiving ------------------------------------------------------------------

    def read(self, wire: bytes) -> Received:
        """Unwrap and dissect one packet from the server; raises WrapError or
        ProtocolError when it cannot be read."""
        from ..wrap import WrapError

        unwrapped = self.wrapper.unwrap(wire)
        received = CODEC.read(unwrapped.plain)
        if received is not None:
            return received
        packet, problem = from_wire(unwrapped.plain, PLAIN)
        if problem:
            raise WrapError(problem)
        opcode = packet.opcode
        acks = list(getattr(packet, "acks", None) or [])
        mpid = packet.message_packet_id if "message_packet_id" in packet.fields else None
        payload = getattr(packet.payload, "load", b"") if opcode in (P_CONTROL_V1, P_CONTROL_SOFT_RESET_V1) else b""
        remote = packet.remote_session_id if acks and "remote_session_id" in packet.fields else None
        return Received(opcode, packet.key_id, packet.session_id, acks, mpid, payload, packet,
                        list(getattr(packet, "tlvs", None) or []), remote)

    def receive(self, received: Received) -> bytes:
        """Take one server packet: note its ACKs, queue our ACK of it, and return
        the TLS bytes it makes available in order (b"" if none yet)."""
        self.packets_received += 1
        now = self.clock()
        for packet_id in received.acks:
            self._acked(packet_id, now)
        if received.acks:
            self._fast_retransmit(max(received.acks), now)
        if received.message_packet_id is None:  # a P_ACK_V1
            return b""
        if self.remote_session_id is None:
            self.remote_session_id = received.session_id
        elif received.session_id != self.remote_session_id:
            raise ProtocolError(f"a packet from another server session ({received.session_id:016x}, "
                                f"expected {self.remote_session_id:016x})")
        mpid = received.message_packet_id
        if mpid not in self.to_ack:
            self.to_ack.append(mpid)
            if self.ack_owed_since is None:
                self.ack_owed_since = now
        if received.opcode == P_CONTROL_HARD_RESET_SERVER_V2:
            return b""
        if mpid < self.expected or mpid in self.early:
            self.duplicates += 1
            return b""
        if mpid >= self.expected + RECEIVE_WINDOW:
            self.to_ack.remove(mpid)  # beyond our window: OpenVPN drops it unacknowledged
            if not self.to_ack:
                self.ack_owed_since = None
            return b""
        if mpid > self.expected:
            self.out_of_order += 1
            # Packet ``expected`` is probably lost. A 2.6 server resends a packet at once when
            # 3 ACKs of later ones have come (reliable.c, N_ACK_RETRANSMIT), instead of after
            # its 2 s timeout: we send them.
            self.nudges = NUDGE_ACKS
        self.early[mpid] = received.payload
        data = []
        while self.expected in self.early:
            data.append(self.early.pop(self.expected))
            self.expected += 1
        return b"".join(data)

    def _acked(self, packet_id, now):
        entry = self.unacked.pop(packet_id, None)
        if entry is None:
            return
        if entry.sent == 1:  # Karn: only packets sent once time the round trip
            sample = now - entry.first_sent
            self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
            self.rto = min(MAX_RTO, max(MIN_RTO, 4 * self.srtt))

    def _fast_retransmit(self, newest_acked, now):
        """A later packet ACKed while an earlier one is not: over UDP the earlier
        one was most likely lost, so it goes again now rather than at its timeout
        (once per send: OpenVPN waits for 3 such ACKs, we have few packets in flight)."""
        if self.proto == "tcp":
            return
        for entry in self.unacked.values():
            if entry.packet_id < newest_acked and entry.sent:
                entry.later_acks += 1
                if entry.later_acks == 1:
                    entry.due = min(entry.due, now)


class PlainCodec:
    """Plain (unwrapped) control packets as structs: the header's and, per opcode and
    ACK count, what follows the count, all from ``wirelayout.control_layout(PLAIN)``
    (the layout read off the layers' field lists - the one generator, shared with the
    dissector). A packet with TLVs, an opcode with no plain layout (10 and 11 are
    always tls-crypt-v2), or one Scapy would call malformed is left to Scapy. tests/test_client.py proves
    the bytes and the fields equal to Scapy's."""

    def __init__(self, layout=None):
        self._layout = None
        self._built = {}  # (opcode, count) -> (struct of the whole packet, names after the count) or None
        if layout is not None:  # (a test's, derived from other layers; else PLAIN's, when first needed)
            self._use(layout)

    def layout(self):
        if self._layout is None:
            from ..wirelayout import control_layout

            self._use(control_layout(PLAIN))
        return self._layout

    def _use(self, layout):
        self._layout, self._session_at = layout, layout.header_names.index("session_id")

    def _shape(self, opcode, count):
        key = (opcode, count)
        if key not in self._built:
            layout = self.layout()
            after = layout.after_acks.get(opcode)
            shape = None
            if after is not None and count < len(after):
                # first byte (op, key id) | the header's fields | ACK count | after_acks
                code = "!B" + layout.header_struct.format[2:] + "B" + after[count].struct.format[1:]
                shape = struct.Struct(code), after[count].names
            self._built[key] = shape
        return self._built[key]

    def build(self, layer, fields: dict, payload: bytes = b""):
        """The packet's bytes (``fields`` as the layer takes them, opcode included); or,
        where no struct fits (TLVs given, opcodes 10 and 11), the Scapy layer to build."""
        acks = fields.get("acks") or ()
        shape = self._shape(fields["opcode"], len(acks))
        if shape is None or fields.get("tlvs"):
            return layer(**fields, wrapping=PLAIN)
        packer, names = shape
        values = [first_byte(fields["opcode"], fields.get("key_id", 0))]
        values.extend(fields.get(name, 0) for name in self.layout().header_names)
        values.append(len(acks))
        listed = iter(acks)  # (the ACK array: one name per item)
        values.extend(next(listed) if name == "acks" else fields.get(name, 0) for name in names)
        return packer.pack(*values) + payload

    def read(self, plain: bytes) -> Optional["Received"]:
        """A server packet of a usual shape (P_CONTROL_V1, soft reset, P_ACK_V1, a
        server reset without TLVs), or None: then Scapy reads it (and says what is wrong)."""
        opcode = plain[0] >> 3 if plain else None
        if opcode not in _READ_OPCODES:
            return None
        layout = self.layout()
        at = layout.header  # the ACK count
        if len(plain) <= at or plain[at] > MAX_ACKS:
            return None
        count = plain[at]
        after = layout.after_acks[opcode][count]
        end = at + 1 + after.size
        if len(plain) < end or (len(plain) > end and not _READ_OPCODES[opcode]):
            return None  # cut short; bytes after a P_ACK_V1's ACKs (malformed), a reset's TLVs
        values = after.unpack(plain, at + 1)
        session_id = layout.unpack_header(plain)[self._session_at]
        acks = after.names.index("acks") if count else 0
        return Received(opcode, plain[0] & 7, session_id, list(values[acks:acks + count]),
                        None if after.message_at is None else values[after.message_at], plain[end:], None, [],
                        None if after.remote_at is None else values[after.remote_at])


CODEC = PlainCodec()
# the server's packets PlainCodec reads, by opcode: whether TLS bytes follow
_READ_OPCODES = {P_CONTROL_V1: True, P_CONTROL_SOFT_RESET_V1: True, P_ACK_V1: False,
                 P_CONTROL_HARD_RESET_SERVER_V2: False}


def build(layer, payload: bytes = b"") -> bytes:
    """``bytes(layer / Raw(payload))``, without Scapy's copies: a control packet
    built 4x faster (the handshake builds a dozen; tests prove the bytes equal)."""
    layer.explicit = 1  # no volatile fields to resolve: skip the copy bytes() makes
    return layer.build() + payload


def early_negotiation_flags(tlvs) -> int:
    """The EARLY_NEG_FLAGS value in a server reset's TLVs (0 if none)."""
    for tlv in tlvs:
        if getattr(tlv, "type", None) == 1:
            value = getattr(tlv, "flags", None)
            if value is not None:
                return int(value)
            raw = getattr(tlv, "value", b"")
            return struct.unpack("!H", raw[:2])[0] if len(raw) >= 2 else 0
    return 0
