"""The fast path: one OpenVPN packet's fields from raw bytes, without Scapy.

Scapy dissects some 15 k packets/s; captures run to millions of packets, so the
listing and JSON read packets here instead. Where each field sits comes from
``ovpndiag.wirelayout``, which reads it off the Scapy layers (``ovpndiag.layers``);
what is left here is how to read them - the ACK count says how many ACKs follow,
the WKc says its own length, the reasons for calling a packet malformed - and
tests/test_packetdecode.py proves this equal to the layers on every packet of every
bundled capture and on tens of thousands of mangled ones. Scapy objects are built
only where a packet needs a field tree (``-V``).
"""

from struct import unpack_from

from ..protocol import CARRIES_WKC, MAX_ACKS, OPCODES, PLAIN, RESETS, MalformedPacket, Opcode, Wrapping
from ..protocol import wkc_length
from ..wirelayout import control_layout, data_header
from .record import Record

_TLS_CRYPT_V2 = Wrapping("tls-crypt-v2")
_P_DATA_V1, _P_DATA_V2, _P_ACK_V1 = int(Opcode.P_DATA_V1), int(Opcode.P_DATA_V2), int(Opcode.P_ACK_V1)


def effective_wrapping(opcode: int, wrapping: Wrapping) -> Wrapping:
    """Opcodes 10 and 11 exist only under tls-crypt-v2 (as in OpenVPN.effective_wrapping)."""
    if opcode in CARRIES_WKC and not wrapping.is_tls_crypt:
        return _TLS_CRYPT_V2
    return wrapping


def decode_packet(data: bytes, wrapping: Wrapping = PLAIN, fields: Record = None) -> Record:
    """Fields of one OpenVPN packet (no TCP framing), set on ``fields`` (a new
    Record by default), named as in the JSON output.

    Attributes set (left None when the packet has no such field): ``opcode``
    (name), ``opcode_value``, ``key_id``, ``session_id`` (int), ``wrapping`` (kind)
    and ``hmac_size`` (tls-auth), ``replay_packet_id``, ``net_time``,
    ``ciphertext_len``, ``acks`` (list), ``remote_session_id`` (int),
    ``message_packet_id``, ``peer_id``, ``payload_len`` (TLS bytes, TLVs or data),
    ``wkc_len``, ``malformed`` (the reason); and, for renderers, ``hmac`` and
    ``tag`` (bytes), ``payload_offset``, ``raw_tlvs`` (list of (optional, type,
    value)). Never raises.
    """
    if fields is None:
        fields = Record()
    size = len(data)
    if not size:
        fields.malformed = "empty packet"
        return fields
    first = data[0]
    opcode = first >> 3
    fields.opcode = OPCODES.get(opcode) or f"opcode {opcode}"
    fields.opcode_value = opcode
    fields.key_id = first & 7
    if opcode == _P_DATA_V2:  # the bulk of most captures: first
        header = _DATA_V2_HEADER or _data_headers()[1]
        if size < header:
            return _truncated(fields, size, opcode, wrapping)
        fields.peer_id = int.from_bytes(data[1:header], "big")
        fields.payload_offset, fields.payload_len = header, size - header
        return fields
    if opcode not in OPCODES:
        fields.malformed = f"unknown opcode {opcode}"
        return fields
    if opcode == _P_DATA_V1:
        header = _DATA_V1_HEADER or _data_headers()[0]
        fields.payload_offset, fields.payload_len = header, size - header
        return fields
    effective = effective_wrapping(opcode, wrapping) if opcode in CARRIES_WKC else wrapping
    return _control(data, size, opcode, effective, wrapping, fields)


_DATA_V1_HEADER = _DATA_V2_HEADER = 0  # set at first use, from the layers


def _data_headers():
    global _DATA_V1_HEADER, _DATA_V2_HEADER
    _DATA_V1_HEADER, _DATA_V2_HEADER = data_header(_P_DATA_V1), data_header(_P_DATA_V2)
    return _DATA_V1_HEADER, _DATA_V2_HEADER


def _truncated(fields, size, opcode, given):
    fields.malformed = f"truncated: {size} bytes is too short for {OPCODES[opcode]} ({given})"
    return fields


# Wrapping -> (kind, hmac_size, visible, header, read_header, after_acks): what _control
# reads of a wirelayout.ControlLayout, once per Wrapping.
_LAYOUTS = {}


def _layout(wrapping):
    layout = control_layout(wrapping)
    missing = [name for name in layout.header_names if not hasattr(Record, name)]
    if missing:  # (a field added to a layer needs its place in the record, and so in the JSON)
        raise TypeError(f"the layers' fields {missing} have no Record slot (dissect/record.py FIELDS)")
    entry = _LAYOUTS[wrapping] = (layout.kind, layout.hmac_size, layout.visible, layout.header,
                                  layout.read_header, layout.after_acks)
    return entry


def shortest(wrapping: Wrapping) -> int:
    """The fewest bytes a control packet (opcodes 10 and 11 aside) has under this
    wrapping: decode_packet() calls a shorter one malformed, so trying it is no use."""
    return control_layout(wrapping).shortest


def _control(data, size, opcode, wrapping, given, fields):
    kind, hmac_size, visible, header, read_header, after_acks = _LAYOUTS.get(wrapping) or _layout(wrapping)
    fields.wrapping = kind
    if kind == "tls-auth":
        fields.hmac_size = hmac_size
    needed = header + (1 if visible else 0)
    if size < needed:
        fields.malformed = f"truncated: {size} bytes, {OPCODES[opcode]} with {wrapping} needs at least {needed}"
        return fields
    read_header(fields, data)  # session id, and the wrapping's fields
    end = size
    if opcode in CARRIES_WKC:
        try:
            wkc_len = wkc_length(data, header)
        except MalformedPacket as error:
            fields.malformed = str(error)
            return fields
        fields.wkc_len = wkc_len
        end = size - wkc_len
    if not visible:
        fields.ciphertext_len = end - header
        return fields
    if header >= end:
        return _truncated(fields, size, opcode, given)
    count = data[header]
    if count > MAX_ACKS:
        fields.malformed = f"ACK count {count} exceeds {MAX_ACKS}"
        return fields
    size_after, unpack, remote_at, message_at, _names, _struct = after_acks[opcode][count]
    position = header + 1 + size_after
    if position > end:
        return _truncated(fields, size, opcode, given)
    values = unpack(data, header + 1)
    fields.acks = list(values[:count])
    if count:
        fields.remote_session_id = values[remote_at]
    if message_at is not None:
        fields.message_packet_id = values[message_at]
    fields.payload_offset, fields.payload_len = position, end - position
    if opcode == _P_ACK_V1:
        if end > position:  # (a P_ACK_V1 has no payload: layers._check_consumed)
            fields.malformed = f"{end - position} bytes after the ACKs of a P_ACK_V1"
        return fields
    if opcode in RESETS:
        _tlvs(data, position, end, fields)
    return fields


def _tlvs(data, position, end, fields):
    tlvs = []
    while position < end:
        if end - position < 4:
            fields.malformed = f"{end - position} bytes left where a TLV header (4 bytes) belongs"
            break
        kind, length = unpack_from("!HH", data, position)
        if position + 4 + length > end:
            fields.malformed = f"TLV length {length} runs past the end of the packet"
            break
        tlvs.append((kind >> 15, kind & 0x7FFF, data[position + 4:position + 4 + length]))
        position += 4 + length
    fields.raw_tlvs = tlvs
