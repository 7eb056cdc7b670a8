"""-V: a field tree per packet, like ``tshark -V``: every field of the Scapy
layer with its value, offset and length (offsets within the OpenVPN packet)."""

from scapy.fields import ConditionalField, FieldLenField, PacketListField
from scapy.packet import Raw

from ..layers import PLAIN, dissect
from .line import _digest, endpoint, utc


def packet_tree(record: dict) -> str:
    wire = record.get("_wire", record["_data"])
    wrapping = record.get("_wrapping", PLAIN)
    lines = [f"Frame {record['frame']}: {record['length']} bytes at {utc(record['time'])} "
             f"(+{record['_relative']:.6f} s), {endpoint(record['src'], record['sport'])} -> "
             f"{endpoint(record['dst'], record['dport'])} {record['transport'].upper()}"]
    if record["transport"] == "tcp":
        lines.append(f"    TCP framing: length {record['length']} (2 bytes before the packet)")
    packet, problem = dissect(wire, wrapping)
    title = "OpenVPN Protocol"
    if wrapping.kind != "none":
        kind = f"tls-auth {_digest(wrapping.hmac_size)}" if wrapping.kind == "tls-auth" else wrapping.kind
        title += f", {'dynamic ' if record.get('dynamic') else ''}{kind}"
        title += ", decrypted" if wrapping.decrypted else ""
    lines.append(title)
    lines.extend(_field_lines(packet, wire))
    if problem:
        lines.append(f"    [Malformed: {problem}]")
    if record.get("hmac_valid") is not None:
        word = "tag" if wrapping.is_tls_crypt else "HMAC"
        verdict = "valid" if record["hmac_valid"] else "INVALID"
        direction = f" (sender's key-direction {record['key_direction']})" if "key_direction" in record else ""
        lines.append(f"    [{word}: {verdict}{direction}]")
    elif wrapping.kind != "none" and "hmac_valid" in record:
        lines.append("    [HMAC/tag not checked: no key given" +
                     (", or a dynamic tls-crypt key from the TLS session" if record.get("dynamic") else "") + "]")
    for name in record.get("tls", ()):
        lines.append(f"    TLS: {name}")
    for detail in record.get("_tls_details", ()):
        shown = {k: v for k, v in detail.items() if k not in ("frame", "name", "packet_ids")}
        lines.append(f"        {detail['name']}: " + ", ".join(f"{k}: {v}" for k, v in shown.items()))
    return "\n".join(lines)


def _field_lines(packet, wire):
    """Each active field of the layer with the bytes it takes."""
    lines, offset = [], 0
    for field in packet.fields_desc:
        if isinstance(field, ConditionalField):
            if not field._evalcond(packet):
                continue
            field = field.fld
        value = packet.getfieldval(field.name)
        bits = getattr(field, "size", 8)
        if bits < 8:  # opcode and key_id share the first byte
            mask = "opcode << 3" if field.name == "opcode" else "low 3 bits"
            lines.append(f"    {field.name}: {field.i2repr(packet, value)} (offset 0, {mask})")
            offset = 1
            continue
        if field.name == "wkc":  # carried at the very end of the packet
            lines.append(f"    wkc: wrapped client key, {len(value)} bytes (offset {len(wire) - len(value)}, "
                         f"{len(value)} bytes)")
            continue
        size = _size(field, packet, value)
        shown = _show(field, packet, value)
        lines.append(f"    {field.name}: {shown} (offset {offset}, {size} bytes)")
        offset += size
    if Raw in packet:
        load = packet[Raw].load
        lines.append(f"    payload: {len(load)} bytes (offset {offset}, {len(load)} bytes)")
    return lines


def _size(field, packet, value):
    if isinstance(field, FieldLenField):
        return field.sz
    if isinstance(field, PacketListField):
        return sum(len(bytes(item)) for item in value)
    return len(field.addfield(packet, b"", value))


def _show(field, packet, value):
    if isinstance(field, PacketListField):
        return "[" + "; ".join(item.mysummary() for item in value) + "]" if value else "[]"
    if isinstance(value, bytes):
        text = value.hex()
        return text if len(text) <= 64 else f"{text[:64]}... ({len(value)} bytes)"
    return field.i2repr(packet, value)
