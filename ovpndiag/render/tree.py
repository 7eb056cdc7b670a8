"""-V: a field tree per packet, like ``tshark -V``.

The frame (length on the wire and captured, link type, time), its link, IP and
UDP/TCP headers (``frametree``, from the frame ``capture.keptframes`` kept), the
OpenVPN fields with their offsets in the OpenVPN packet, and the TLS records and
handshake messages the packet completes (``tlstree``). With ``hexdump`` the
OpenVPN bytes follow, as ``tshark -x`` prints bytes.

Built from the record's decoded fields and the wrapping's layout (``wirelayout``,
read off the Scapy layers once per wrapping), never by dissecting the packet
again: a capture of half a million packets is printed in seconds. Records are
read through ``field`` (plain dicts with ``_`` keys, or ``Record`` objects).
"""

from ..protocol import DIGEST_BY_SIZE, PLAIN, Opcode
from ..wirelayout import control_layout
from . import frametree, hexdump as hexdumps, tlstree
from .line import utc_text

def fields_of(record):
    """A getter ``get(name)`` for a dissect.record.Record (every field is set, None when absent)."""
    return record.__getattribute__


_CARRY_TLS = (Opcode.P_CONTROL_SOFT_RESET_V1, Opcode.P_CONTROL_V1, Opcode.P_CONTROL_WKC_V1)


class TreeRenderer:
    """``render(record) -> str``: the tree, the hex dump, or both, per packet.
    ``frames``: a ``KeptFrames`` to show each packet's frame and headers from (None:
    the frame's one-line summary only). ``line``: the one-line renderer shown above a
    hex dump without the tree (``-x`` alone)."""

    def __init__(self, frames=None, tree: bool = True, hexdump: bool = False, line=None):
        self.frames, self.tree, self.hexdump, self.line = frames, tree, hexdump, line

    def __call__(self, record) -> str:
        if self.tree:
            text = packet_tree(record, self.frames)
        else:
            text = self.line(record)
        if self.hexdump:
            get = fields_of(record)
            text += "\n\n" + hexdumps.packet_dump(get("data"), get("decrypted"), get("decoded_with"))
        return text + "\n"


def packet_tree(record, frames=None) -> str:
    get = fields_of(record)
    lines = []
    kept = frames.get(get("frame")) if frames is not None else None
    frametree.frame_lines(lines, get, kept)
    _openvpn_lines(lines, record, get)
    details = get("tls_details")
    if details:
        tlstree.tls_lines(lines, details)
    elif get("opcode_value") in (Opcode.P_CONTROL_V1, Opcode.P_CONTROL_WKC_V1) and get("payload_len") and get("message_packet_id") is not None:
        lines.append("Transport Layer Security")
        lines.append(f"    [TLS bytes of a record that is not complete yet ({get('payload_len')} bytes here)]")
    return "\n".join(lines)


# --- OpenVPN ------------------------------------------------------------------------

_TYPE_LINES = {}  # first byte -> its three lines


def _type_lines(first: int, opcode_name: str) -> str:
    text = _TYPE_LINES.get(first)
    if text is None:
        bits = f"{first >> 3:05b}"
        text = _TYPE_LINES[first] = (
            f"    Type: 0x{first:02x} [opcode/key_id]\n"
            f"        {bits[:4]} {bits[4]}... = Opcode: {opcode_name} (0x{first >> 3:02x})\n"
            f"        .... .{first & 7:03b} = Key ID: {first & 7}")
    return text


_HEADER_LABELS = {"session_id": "Session ID", "hmac": "HMAC", "replay_packet_id": "Replay Packet-ID",
                  "net_time": "Net Time", "tag": "Tag"}


def _wrapping_title(wrapping, dynamic) -> str:
    if wrapping is None or wrapping.kind == "none":
        return "OpenVPN Protocol"
    kind = wrapping.kind
    if kind == "tls-auth":
        kind = f"tls-auth {DIGEST_BY_SIZE.get(wrapping.hmac_size, f'{wrapping.hmac_size}-byte HMAC')}"
    return (f"OpenVPN Protocol, {'dynamic ' if dynamic else ''}{kind}"
            + (", decrypted" if wrapping.decrypted else ""))


def _openvpn_lines(lines, record, get):
    wire = get("decrypted") or get("data") or b""
    wrapping = get("decoded_with") or PLAIN
    opcode = get("opcode_value")
    add = lines.append
    if get("transport") == "tcp":
        add(f"OpenVPN over TCP: packet length {get('length')} (the 2 bytes before the packet)")
    add(_wrapping_title(wrapping, get("dynamic")))
    if not wire:
        add("    [Malformed: empty packet]")
        return
    add(_type_lines(wire[0], get("opcode") or f"opcode {wire[0] >> 3}"))
    malformed = get("malformed")
    if opcode == Opcode.P_DATA_V2 and get("peer_id") is not None:
        add(f"    Peer ID: {get('peer_id')} (offset 1, 3 bytes)")
        add(f"    Data: {get('payload_len')} bytes (offset 4, encrypted)")
    elif opcode == Opcode.P_DATA_V1:
        add(f"    Data: {get('payload_len')} bytes (offset 1, encrypted)")
    elif get("session_id") is not None:
        _control_lines(add, record, get, wire, wrapping, opcode)
    if malformed:
        add(f"    [Malformed: {malformed}]")


def _control_lines(add, record, get, wire, wrapping, opcode):
    layout = control_layout(wrapping)
    for name, (offset, size) in layout.fields.items():
        value = get(name)
        if value is None:
            continue
        label = _HEADER_LABELS.get(name, name)
        if name == "session_id":
            add("    Session ID: %016x (offset %d, %d bytes)" % (value, offset, size))
        elif name in ("hmac", "tag"):
            add(f"    {label}: {value.hex()} (offset {offset}, {size} bytes)" + _verdict(record, get, wrapping))
        elif name == "net_time":
            add(f"    Net Time: {value} ({utc_text(value)}) (offset {offset}, {size} bytes)")
        else:
            add(f"    {label}: {value} (offset {offset}, {size} bytes)")
    position = layout.header
    ciphertext = get("ciphertext_len")
    if ciphertext is not None:  # tls-crypt without its key: the rest is sealed
        add(f"    Encrypted: {ciphertext} bytes (offset {position}): ACKs, packet-id and TLS payload")
    acks = get("acks")
    if acks is not None:
        count = len(acks)
        add(f"    Message Packet-ID Array Length: {count} (offset {position}, 1 byte)")
        position += 1
        if count:
            add(f"    Packet-ID Array (offset {position}, {4 * count} bytes)")
            for ack in acks:
                add(f"        Message Packet-ID Array Element: {ack}")
            position += 4 * count
            remote = get("remote_session_id")
            if remote is not None:
                add("    Remote Session ID: %016x (offset %d, 8 bytes)" % (remote, position))
                position += 8
    mpid = get("message_packet_id")
    if mpid is not None:
        add(f"    Message Packet-ID: {mpid} (offset {position}, 4 bytes)")
    payload = get("payload_len")
    offset = get("payload_offset")
    tlvs = get("raw_tlvs")
    if tlvs:
        names = get("tlvs") or []
        at = offset
        for number, (optional, kind, value) in enumerate(tlvs):
            shown = names[number] if number < len(names) else f"TLV type {kind}"
            add(f"    Early Negotiation TLV: {shown} (offset {at}, {4 + len(value)} bytes)")
            add(f"        Type: {kind}{' (optional)' if optional else ''}, Length: {len(value)}, "
                f"Value: {value.hex() or '(empty)'}")
            at += 4 + len(value)
    elif payload and offset is not None:
        what = "TLS" if opcode in _CARRY_TLS else "bytes after the ACKs" if opcode == Opcode.P_ACK_V1 else "TLVs"
        add(f"    Payload: {payload} bytes of {what} (offset {offset})")
    wkc = get("wkc_len")
    if wkc:
        add(f"    Wrapped Client Key (WKc): {wkc} bytes (offset {len(wire) - wkc}, at the end; "
            f"its last 2 bytes are its length)")
        metadata = record.wkc_metadata
        if metadata:  # (opened with the tls-crypt-v2 server key)
            stamp = metadata.get("timestamp")
            add(f"        [Client key metadata: type {metadata.get('metadata_type')}"
                + (f", made {utc_text(stamp)}" if stamp else "") + "]")
    if not get("hmac") and not get("tag") and record.signed:
        add(_verdict(record, get, wrapping).strip())


def _verdict(record, get, wrapping) -> str:
    valid = get("hmac_valid")
    word = "tag" if wrapping.is_tls_crypt else "HMAC"
    if valid is not None:
        direction = get("key_direction")
        return (f" [{word} {'valid' if valid else 'INVALID'}"
                + (f", sender's key-direction {direction}" if direction is not None else "") + "]")
    if record.signed:
        return (f" [{word} not checked: no key given"
                + (", or a dynamic tls-crypt key from the TLS session" if get("dynamic") else "") + "]")
    return ""
