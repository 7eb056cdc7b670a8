"""OpenVPN's wire format as Scapy layers: the one definition every command uses.

Every OpenVPN packet starts with one byte, ``opcode << 3 | key_id``; ``OpenVPN``
dispatches on it to the layout of that opcode:

- ``OpenVPNReset``    hard resets (opcodes 1, 2, 7, 8, 10): early-negotiation TLVs
- ``OpenVPNControl``  P_CONTROL_V1, soft reset, P_CONTROL_WKC_V1 (4, 3, 11): TLS bytes
- ``OpenVPNAck``      P_ACK_V1 (5): ACKs only, no message packet-id
- ``OpenVPNDataV1`` / ``OpenVPNDataV2``  data channel (6, 9)
- ``OpenVPNTCP``      the 2-byte length framing OpenVPN uses over TCP

Nothing on the wire says how a control packet is wrapped (plain, tls-auth with
an HMAC of some size, tls-crypt), so the caller says it, with a ``Wrapping``::

    OpenVPN(data, wrapping=Wrapping.tls_auth("SHA256"))

Without one, packets are read as unwrapped, or as ``conf.contribs["openvpn"]``
says for Scapy users (``ovpndiag.scapy_contrib``: by default inferred from the
packet and what its flow showed, see ``ovpndiag.layer_settings``). Opcodes 10 and 11 exist only under
tls-crypt-v2 and are always read so. Binding to UDP/TCP port 1194 lives in
``ovpndiag.bindings`` so that code which only builds and parses packets does not
pay for importing Scapy's IP layers.

``from_wire()`` is the entry point that never raises: a packet that does not fit
its layout comes back with the reason it is malformed.
"""

import struct
from typing import Optional, Tuple

from scapy.config import conf
from scapy.fields import (
    BitEnumField,
    BitField,
    ConditionalField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    PacketListField,
    PacketLenField,
    ShortField,
    StrLenField,
    UTCTimeField,
    X3BytesField,
    XLongField,
    XStrField,
    XStrFixedLenField,
    XStrLenField,
)
from scapy.packet import Packet, Padding, Raw

__all__ = [
    "OPCODES", "HMAC_SIZES", "TLS_CRYPT_TAG_SIZE", "EARLY_NEG_START",
    "Wrapping", "PLAIN", "MalformedPacket", "from_wire",
    "OpenVPN", "OpenVPNHeader", "OpenVPNReset", "OpenVPNControl", "OpenVPNAck",
    "OpenVPNDataV1", "OpenVPNDataV2", "OpenVPNTCP",
    "EarlyNegotiationTLV", "EarlyNegotiationFlags",
]

from .protocol import (  # noqa: F401 - the wire facts, re-exported with the layers
    CARRIES_WKC, CLIENT_RESETS, EARLY_NEG_START, HMAC_SIZES, MAX_ACKS, OPCODES, PLAIN, RESETS,
    SERVER_RESETS, SESSION_ID_SIZE, TLS_CRYPT_TAG_SIZE, MalformedPacket, Opcode, Wrapping,
)


def _default_wrapping(data=b"", underlayer=None):
    """No wrapping given: none, unless conf.contribs["openvpn"] says otherwise
    (``ovpndiag.scapy_contrib``: fixed, or inferred from the packet and its flow)."""
    settings = conf.contribs.get("openvpn")
    if not settings:
        return PLAIN
    from .layer_settings import wrapping_for  # Scapy users' settings only: the library always says
    return wrapping_for(settings, data, underlayer)


class _WithWrapping(Packet):
    """Carries the Wrapping a packet was given to everything made from it."""

    __slots__ = ["wrapping"]

    def __init__(self, _pkt=b"", *args, wrapping=None, **kwargs):
        if wrapping is None:
            underlayer = kwargs.get("_underlayer")
            wrapping = getattr(underlayer, "wrapping", None) or self._wrapping_not_given(_pkt, underlayer)
        self.wrapping = wrapping
        super().__init__(_pkt, *args, **kwargs)

    _wrapping_not_given = staticmethod(_default_wrapping)

    def copy(self):
        clone = super().copy()
        clone.wrapping = self.wrapping
        return clone

    def clone_with(self, payload=None, **kargs):
        clone = super().clone_with(payload=payload, **kargs)
        clone.wrapping = self.wrapping
        return clone


class OpenVPN(_WithWrapping):
    """The opcode/key-id byte; dissecting through this class picks the layout."""

    name = "OpenVPN"
    match_subclass = True  # pkt[OpenVPN] finds any OpenVPN message
    fields_desc = [
        BitEnumField("opcode", 0, 5, OPCODES),
        BitField("key_id", 0, 3),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt:
            opcode = _pkt[0] >> 3
        else:
            opcode = kargs.get("opcode")
        if opcode is not None and (cls is OpenVPN or (cls._opcodes and opcode not in cls._opcodes)):
            return _CLASS_BY_OPCODE.get(opcode, OpenVPNHeader)
        return cls

    _opcodes = ()

    @property
    def opcode_name(self):
        return OPCODES.get(self.opcode, f"opcode {self.opcode}")

    @property
    def effective_wrapping(self):
        """Opcodes 10 and 11 only exist under tls-crypt-v2, whatever we were told."""
        if self.opcode in CARRIES_WKC and not self.wrapping.is_tls_crypt:
            return Wrapping("tls-crypt-v2")
        return self.wrapping

    def mysummary(self):
        return f"OpenVPN {self.opcode_name} key_id={self.key_id}"


class OpenVPNHeader(OpenVPN):
    """Only the opcode/key-id byte, the rest Raw: for opcodes OpenVPN does not
    define (0, 12-31) and for what is left of a malformed packet."""

    name = "OpenVPN header"

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        return cls


# --- control packets ---------------------------------------------------------

def _wrapping(pkt):
    return pkt.effective_wrapping


def _visible(pkt):
    """ACKs, message packet-id and payload are on the wire in the clear."""
    return not _wrapping(pkt).hides_control_fields


def _ack_count(pkt):
    # While building, a FieldLenField left as None reads None: count the list.
    return pkt.ack_count if pkt.ack_count is not None else len(pkt.acks or ())


def _checked_ack_count(pkt):
    if pkt.ack_count > MAX_ACKS:
        raise MalformedPacket(f"ACK count {pkt.ack_count} exceeds {MAX_ACKS}")
    return pkt.ack_count


def _header_length(pkt):
    """Bytes before the ACK array (or the ciphertext): op, session id, wrapping."""
    wrapping = _wrapping(pkt)
    length = 1 + SESSION_ID_SIZE
    if wrapping.kind == "tls-auth":
        length += wrapping.hmac_size + 8
    elif wrapping.is_tls_crypt:
        length += 8 + TLS_CRYPT_TAG_SIZE
    return length


class _HMACField(XStrLenField):
    """tls-auth HMAC, its size given by the Wrapping; zeros until signed."""

    def __init__(self, name):
        super().__init__(name, None, length_from=lambda pkt: _wrapping(pkt).hmac_size)

    def i2m(self, pkt, x):
        return b"\0" * _wrapping(pkt).hmac_size if x is None else x


class _WKcField(XStrField):
    """The wrapped client key appended to opcodes 10 and 11.

    It sits at the very end of the packet and says its own length in its last two
    bytes, so it is taken from the end of what is left (the fields after it and the
    payload read what is before it) and ``post_build`` appends it last.
    """

    at_end = True  # (how wirelayout knows it is not where it stands in fields_desc)

    def getfield(self, pkt, s):
        from .protocol import wkc_length

        length = wkc_length(s, 0)
        return s[:-length], s[-length:]

    def addfield(self, pkt, s, val):
        return s  # appended by post_build, after the payload


def _control_fields(default_opcode, with_message_packet_id=True):
    def wrapped_as(*kinds):
        return lambda pkt: _wrapping(pkt).kind in kinds

    fields = [
        BitEnumField("opcode", int(default_opcode), 5, OPCODES),
        BitField("key_id", 0, 3),
        XLongField("session_id", 0),
        ConditionalField(_HMACField("hmac"), wrapped_as("tls-auth")),
        ConditionalField(IntField("replay_packet_id", 1), lambda pkt: _wrapping(pkt).kind != "none"),
        ConditionalField(UTCTimeField("net_time", 0), lambda pkt: _wrapping(pkt).kind != "none"),
        ConditionalField(XStrFixedLenField("tag", b"\0" * TLS_CRYPT_TAG_SIZE, TLS_CRYPT_TAG_SIZE),
                         lambda pkt: _wrapping(pkt).is_tls_crypt),
        ConditionalField(_WKcField("wkc", b""), lambda pkt: pkt.opcode in CARRIES_WKC),
        ConditionalField(XStrField("ciphertext", b""), lambda pkt: not _visible(pkt)),
        ConditionalField(FieldLenField("ack_count", None, fmt="B", count_of="acks"), _visible),
        ConditionalField(FieldListField("acks", [], IntField("", 0), count_from=_checked_ack_count), _visible),
        ConditionalField(XLongField("remote_session_id", 0),
                         lambda pkt: _visible(pkt) and _ack_count(pkt) > 0),
    ]
    if with_message_packet_id:
        fields.append(ConditionalField(IntField("message_packet_id", 0), _visible))
    return fields


class _ControlBase(OpenVPN):
    def do_dissect(self, s):
        # Scapy reads fixed-size byte strings short without complaint: check first.
        self.opcode = s[0] >> 3
        needed = _header_length(self) + (1 if _visible(self) else 0)
        if len(s) < needed:
            raise MalformedPacket(f"truncated: {len(s)} bytes, {self.opcode_name} with "
                                  f"{_wrapping(self)} needs at least {needed}")
        rest = super().do_dissect(s)
        if self.opcode in CARRIES_WKC:
            # The WKc was taken from the end, so Scapy's cache of the bytes this
            # layer consumed would be wrong: rebuild from the fields instead.
            self.raw_packet_cache = None
        return rest

    def post_build(self, pkt, pay):
        if self.opcode in CARRIES_WKC:
            return pkt + pay + (self.wkc or b"")
        return pkt + pay

    def extract_padding(self, s):
        return s, b""

    def mysummary(self):
        parts = [f"OpenVPN {self.opcode_name} key_id={self.key_id} sid={self.session_id:016x}"]
        if _visible(self):
            if self.acks:
                parts.append(f"acks={list(self.acks)} remote={self.remote_session_id:016x}")
            if "message_packet_id" in self.fieldtype and _visible(self):
                parts.append(f"mpid={self.message_packet_id}")
        wrapping = self.effective_wrapping
        if wrapping.kind != "none":
            parts.append(f"[{wrapping}]")
        return " ".join(parts)


class EarlyNegotiationTLV(Packet):
    """One TLV in a hard reset's payload (early negotiation, OpenVPN 2.6)."""

    name = "OpenVPN early-negotiation TLV"
    fields_desc = [
        BitField("optional", 0, 1),
        BitEnumField("type", 0, 15, {1: "EARLY_NEG_FLAGS"}),
        FieldLenField("length", None, length_of="value", fmt="!H"),
        StrLenField("value", b"", length_from=lambda pkt: pkt.length),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt and len(_pkt) >= 6 and struct.unpack("!HH", _pkt[:4]) == (1, 2):
            return EarlyNegotiationFlags
        return cls

    def do_dissect(self, s):
        if len(s) < 4:
            raise MalformedPacket(f"{len(s)} bytes left where a TLV header (4 bytes) belongs")
        return super().do_dissect(s)

    def mysummary(self):
        return f"TLV type {self.type}{' (optional)' if self.optional else ''}, {len(self.value)} bytes"

    def extract_padding(self, s):
        return b"", s


class EarlyNegotiationFlags(EarlyNegotiationTLV):
    name = "OpenVPN early-negotiation flags"
    fields_desc = [
        BitField("optional", 0, 1),
        BitEnumField("type", 1, 15, {1: "EARLY_NEG_FLAGS"}),
        ShortField("length", 2),
        FlagsField("flags", 0, 16, {0x0001: "RESEND_WKC"}),
    ]

    def mysummary(self):
        return f"EARLY_NEG_FLAGS {self.flags}"


class OpenVPNReset(_ControlBase):
    """Hard resets: the first packet of each side; the payload holds TLVs."""

    name = "OpenVPN hard reset"
    _opcodes = RESETS
    fields_desc = _control_fields(Opcode.P_CONTROL_HARD_RESET_CLIENT_V2) + [
        ConditionalField(PacketListField("tlvs", [], EarlyNegotiationTLV), _visible),
    ]

    def hashret(self):
        return b""  # replies are matched by answers(): the session ids may be encrypted

    def answers(self, other):
        """A server reset answers the client reset whose session id it echoes."""
        if not isinstance(other, OpenVPNReset):
            return 0
        if self.opcode not in SERVER_RESETS or other.opcode not in CLIENT_RESETS:
            return 0
        if not _visible(self):
            return 1  # the echo is encrypted; the opcodes are all we can match
        return int(self.remote_session_id == other.session_id and _ack_count(self) > 0)


class OpenVPNControl(_ControlBase):
    """P_CONTROL_V1 (TLS bytes), soft reset and P_CONTROL_WKC_V1."""

    name = "OpenVPN control"
    _opcodes = (Opcode.P_CONTROL_SOFT_RESET_V1, Opcode.P_CONTROL_V1, Opcode.P_CONTROL_WKC_V1)
    fields_desc = _control_fields(Opcode.P_CONTROL_V1)

    def guess_payload_class(self, payload):
        return Raw

    def do_dissect_payload(self, s):
        settings = conf.contribs.get("openvpn")
        if s and settings and settings.get("tls"):
            from .layer_settings import hands_to_tls, tls_payload  # Scapy's TLS layer, when asked
            records = tls_payload(s, self) if hands_to_tls(settings, self.opcode) else None
            if records is not None:
                self.add_payload(records)
                return
        super().do_dissect_payload(s)


class OpenVPNAck(_ControlBase):
    name = "OpenVPN ACK"
    _opcodes = (Opcode.P_ACK_V1,)
    fields_desc = _control_fields(Opcode.P_ACK_V1, with_message_packet_id=False)


# --- data channel ------------------------------------------------------------

class OpenVPNDataV1(OpenVPN):
    """P_DATA_V1: the rest is the encrypted payload (AEAD or CBC+HMAC)."""

    name = "OpenVPN data V1"
    _opcodes = (Opcode.P_DATA_V1,)
    fields_desc = [
        BitEnumField("opcode", int(Opcode.P_DATA_V1), 5, OPCODES),
        BitField("key_id", 0, 3),
    ]

    def guess_payload_class(self, payload):
        return Raw


class OpenVPNDataV2(OpenVPN):
    """P_DATA_V2: a 3-byte peer-id, then the encrypted payload."""

    name = "OpenVPN data V2"
    _opcodes = (Opcode.P_DATA_V2,)
    fields_desc = [
        BitEnumField("opcode", int(Opcode.P_DATA_V2), 5, OPCODES),
        BitField("key_id", 0, 3),
        X3BytesField("peer_id", 0),
    ]

    def guess_payload_class(self, payload):
        return Raw

    def mysummary(self):
        return f"OpenVPN P_DATA_V2 key_id={self.key_id} peer_id={self.peer_id}"


_CLASS_BY_OPCODE = {}
for _cls in (OpenVPNReset, OpenVPNControl, OpenVPNAck, OpenVPNDataV1, OpenVPNDataV2):
    for _opcode in _cls._opcodes:
        _CLASS_BY_OPCODE[_opcode] = _cls


# --- TCP framing -------------------------------------------------------------

class _FramedPacketField(PacketLenField):
    """The OpenVPN packet inside a TCP frame, read with the frame's Wrapping."""

    def m2i(self, pkt, m):
        return OpenVPN(m, wrapping=pkt.wrapping, _underlayer=pkt)  # (the frame's flow, for inference)


class OpenVPNTCP(_WithWrapping):
    """One OpenVPN packet over TCP: 2-byte length (not counting itself), packet.

    Several packets in one segment dissect as a chain of OpenVPNTCP layers; a
    frame whose end has not arrived yet is left as Padding, which is how Scapy's
    TCPSession knows to keep it for the next segment.
    """

    name = "OpenVPN over TCP"
    fields_desc = [
        FieldLenField("length", None, length_of="packet", fmt="!H"),
        _FramedPacketField("packet", None, OpenVPN, length_from=lambda pkt: pkt.length),
    ]

    def do_dissect(self, s):
        if len(s) < 2 or struct.unpack("!H", s[:2])[0] > len(s) - 2:
            raise MalformedPacket(f"TCP frame truncated: {len(s)} bytes of a longer frame")
        return super().do_dissect(s)

    def guess_payload_class(self, payload):
        return OpenVPNTCP if _complete_frames_length(payload) else Padding

    def mysummary(self):
        return self.packet.mysummary() if self.packet is not None else "OpenVPN over TCP"

    @classmethod
    def tcp_reassemble(cls, data, metadata, session):
        """Scapy TCPSession hook: return the complete frames, once there is one."""
        if not _complete_frames_length(data):
            return None
        if metadata.get("original") is not None:  # (cleared for the frames after the first)
            session["openvpn_segment"] = metadata["original"].getlayer("TCP")
        return cls(data, wrapping=session.get("openvpn_wrapping"), _underlayer=session.get("openvpn_segment"))

    @staticmethod
    def _wrapping_not_given(data=b"", underlayer=None):
        """A frame's packets infer their wrapping themselves (None) unless it is fixed."""
        settings = conf.contribs.get("openvpn")
        if not settings:
            return PLAIN
        from .layer_settings import fixed_wrapping
        return fixed_wrapping(settings)


def _complete_frames_length(data):
    """Bytes of ``data`` taken by whole length-prefixed frames (0 if none)."""
    offset = 0
    while len(data) - offset >= 2:
        end = offset + 2 + struct.unpack("!H", data[offset:offset + 2])[0]
        if end > len(data):
            break
        offset = end
    return offset


# --- the entry point that never raises -----------------------------------------

def from_wire(data: bytes, wrapping: Wrapping = PLAIN) -> Tuple[OpenVPN, Optional[str]]:
    """Dissect one OpenVPN packet (without TCP framing).

    Returns ``(packet, None)``, or ``(OpenVPNHeader, reason)`` when the bytes do
    not fit the layout of their opcode. Never raises on any input.
    """
    data = bytes(data)
    if not data:
        return OpenVPN(), "empty packet"
    opcode = data[0] >> 3
    if opcode not in OPCODES:
        return OpenVPNHeader(data, wrapping=wrapping), f"unknown opcode {opcode}"
    try:
        pkt = OpenVPN(data, wrapping=wrapping)
        _check_consumed(pkt)
        return pkt, None
    except MalformedPacket as error:
        reason = str(error)
    except Exception:  # Scapy reads past the end: the packet is shorter than its layout
        reason = f"truncated: {len(data)} bytes is too short for {OPCODES[opcode]} ({wrapping})"
    return OpenVPNHeader(data, wrapping=wrapping), reason


def _check_consumed(pkt):
    """Raise MalformedPacket where a layer silently read less than it claims."""
    if isinstance(pkt, OpenVPNAck) and _visible(pkt) and pkt.payload:
        raise MalformedPacket(f"{len(pkt.payload)} bytes after the ACKs of a P_ACK_V1")
    for tlv in getattr(pkt, "tlvs", None) or ():
        if not isinstance(tlv, EarlyNegotiationTLV):  # Scapy gave up on a short tail
            raise MalformedPacket(f"{len(tlv)} bytes left where a TLV header (4 bytes) belongs")
        if not isinstance(tlv, EarlyNegotiationFlags) and tlv.length != len(tlv.value):
            raise MalformedPacket(f"TLV length {tlv.length} runs past the end of the packet")
