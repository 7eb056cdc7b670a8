"""The fast path: one OpenVPN packet's fields from raw bytes, without Scapy.

Scapy dissects some 15 k packets/s; captures run to millions of packets, so the
listing and JSON read packets here instead. This is the same layout as
``ovpndiag.layers`` - same fields, same conditions, same reasons for calling a
packet malformed - and tests/test_decode.py proves the two equal on every
packet of every bundled capture and on tens of thousands of mangled ones.
Scapy objects are built only where a packet needs a field tree (``-V``).
"""

from struct import Struct, unpack_from

from ..protocol import (CARRIES_WKC, MAX_ACKS, OPCODES, PLAIN, RESETS, TLS_CRYPT_TAG_SIZE, Wrapping)

_TLS_CRYPT_V2 = Wrapping("tls-crypt-v2")


def effective_wrapping(opcode: int, wrapping: Wrapping) -> Wrapping:
    """Opcodes 10 and 11 exist only under tls-crypt-v2 (as in OpenVPN.effective_wrapping)."""
    if opcode in CARRIES_WKC and not wrapping.is_tls_crypt:
        return _TLS_CRYPT_V2
    return wrapping


def decode(data: bytes, wrapping: Wrapping = PLAIN, fields: dict = None) -> dict:
    """Fields of one OpenVPN packet (no TCP framing), added to ``fields`` (a new
    dict by default), named as in the JSON output.

    Keys (absent when the packet has no such field): ``opcode`` (name),
    ``opcode_value``, ``key_id``, ``session_id`` (int), ``wrapping`` (kind) and
    ``hmac_size`` (tls-auth), ``replay_packet_id``, ``net_time``,
    ``ciphertext_len``, ``acks`` (list), ``remote_session_id`` (int),
    ``message_packet_id``, ``peer_id``, ``payload_len`` (TLS bytes, TLVs or data),
    ``wkc_len``, ``malformed`` (the reason); and, for renderers, ``_hmac`` and
    ``_tag`` (bytes), ``_payload_offset``, ``_tlvs`` (list of (optional, type,
    value)). Never raises.
    """
    if fields is None:
        fields = {}
    size = len(data)
    if not size:
        fields["malformed"] = "empty packet"
        return fields
    first = data[0]
    opcode = first >> 3
    fields["opcode"] = OPCODES.get(opcode) or f"opcode {opcode}"
    fields["opcode_value"] = opcode
    fields["key_id"] = first & 7
    if opcode == 9:  # P_DATA_V2, the bulk of most captures: first
        if size < 4:
            return _truncated(fields, size, opcode, wrapping)
        fields["peer_id"] = int.from_bytes(data[1:4], "big")
        fields["_payload_offset"], fields["payload_len"] = 4, size - 4
        return fields
    if opcode not in OPCODES:
        fields["malformed"] = f"unknown opcode {opcode}"
        return fields
    if opcode == 6:  # P_DATA_V1
        fields["_payload_offset"], fields["payload_len"] = 1, size - 1
        return fields
    effective = effective_wrapping(opcode, wrapping) if opcode in CARRIES_WKC else wrapping
    return _control(data, size, opcode, effective, wrapping, fields)


def _truncated(fields, size, opcode, given):
    fields["malformed"] = f"truncated: {size} bytes is too short for {OPCODES[opcode]} ({given})"
    return fields


# Wrapping -> (kind, hmac_size, visible, header, unpack of the header): what _control reads
# of a wrapping, worked out once per Wrapping (a run sees a handful) instead of per packet.
_LAYOUTS = {}
# By ACK count: the ACKs, the remote session id and the message packet-id in one unpack
# (without the packet-id for P_ACK_V1).
_AFTER_ACKS = [Struct(f"!{count}I" + ("Q" if count else "") + "I").unpack_from for count in range(MAX_ACKS + 1)]
_AFTER_ACKS_V1 = [Struct(f"!{count}IQ").unpack_from if count else None for count in range(MAX_ACKS + 1)]


def _layout(wrapping):
    kind = wrapping.kind
    if kind == "tls-auth":
        header = 9 + wrapping.hmac_size + 8
        unpack = Struct(f"!xQ{wrapping.hmac_size}sII").unpack_from  # session id, HMAC, replay id, time
    elif kind != "none":
        header = 9 + 8 + TLS_CRYPT_TAG_SIZE
        unpack = Struct(f"!xQII{TLS_CRYPT_TAG_SIZE}s").unpack_from  # session id, replay id, time, tag
    else:
        header = 9
        unpack = Struct("!xQ").unpack_from
    layout = _LAYOUTS[wrapping] = (kind, wrapping.hmac_size, not wrapping.hides_control_fields, header, unpack)
    return layout


def shortest(wrapping: Wrapping) -> int:
    """The fewest bytes a control packet (opcodes 10 and 11 aside) has under this
    wrapping: decode() calls a shorter one malformed, so trying it is no use."""
    kind, _hmac_size, visible, header, _unpack = _LAYOUTS.get(wrapping) or _layout(wrapping)
    return header + (1 if visible else 0)


def _control(data, size, opcode, wrapping, given, fields):
    kind, hmac_size, visible, header, unpack = _LAYOUTS.get(wrapping) or _layout(wrapping)
    fields["wrapping"] = kind
    if kind == "tls-auth":
        fields["hmac_size"] = hmac_size
    needed = header + (1 if visible else 0)
    if size < needed:
        fields["malformed"] = (f"truncated: {size} bytes, {OPCODES[opcode]} with {wrapping} "
                               f"needs at least {needed}")
        return fields
    if kind == "tls-auth":
        fields["session_id"], fields["_hmac"], fields["replay_packet_id"], fields["net_time"] = unpack(data)
    elif kind == "none":
        fields["session_id"] = unpack(data)[0]
    else:
        fields["session_id"], fields["replay_packet_id"], fields["net_time"], fields["_tag"] = unpack(data)
    end = size
    if opcode in CARRIES_WKC:
        left = size - header
        if left < 2:
            fields["malformed"] = f"{left} bytes left where a wrapped client key (WKc) belongs"
            return fields
        wkc_len = unpack_from("!H", data, size - 2)[0]
        if not 2 <= wkc_len <= left:
            fields["malformed"] = (f"WKc length {wkc_len} in the last two bytes does not fit the "
                                   f"{left} bytes left")
            return fields
        fields["wkc_len"] = wkc_len
        end = size - wkc_len
    if not visible:
        fields["ciphertext_len"] = end - header
        return fields
    if header >= end:
        return _truncated(fields, size, opcode, given)
    count = data[header]
    if count > MAX_ACKS:
        fields["malformed"] = f"ACK count {count} exceeds {MAX_ACKS}"
        return fields
    position = header + 1 + 4 * count + (8 if count else 0) + (0 if opcode == 5 else 4)
    if position > end:
        return _truncated(fields, size, opcode, given)
    if opcode == 5:
        if count:
            values = _AFTER_ACKS_V1[count](data, header + 1)
            fields["acks"], fields["remote_session_id"] = list(values[:count]), values[count]
        else:
            fields["acks"] = []
        fields["_payload_offset"], fields["payload_len"] = position, end - position
        if end > position:
            fields["malformed"] = f"{end - position} bytes after the ACKs of a P_ACK_V1"
        return fields
    if count:
        values = _AFTER_ACKS[count](data, header + 1)
        fields["acks"], fields["remote_session_id"] = list(values[:count]), values[count]
        fields["message_packet_id"] = values[count + 1]
    else:
        fields["acks"] = []
        fields["message_packet_id"] = unpack_from("!I", data, header + 1)[0]
    fields["_payload_offset"], fields["payload_len"] = position, end - position
    if opcode in RESETS:
        _tlvs(data, position, end, fields)
    return fields


def _tlvs(data, position, end, fields):
    tlvs = []
    while position < end:
        if end - position < 4:
            fields["malformed"] = f"{end - position} bytes left where a TLV header (4 bytes) belongs"
            break
        kind, length = unpack_from("!HH", data, position)
        if position + 4 + length > end:
            fields["malformed"] = f"TLV length {length} runs past the end of the packet"
            break
        tlvs.append((kind >> 15, kind & 0x7FFF, data[position + 4:position + 4 + length]))
        position += 4 + length
    fields["_tlvs"] = tlvs
