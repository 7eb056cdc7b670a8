"""Test helper: capture files and frames built with struct, from real captured bytes.

Used to put the real captures' packets into shapes the recordings do not have
(other byte orders, pcapng block kinds, link types, segmentations, fragments).
Independent of ovpndiag.capture on purpose.
"""

import struct

from captures import CAPTURES


def real_records(name):
    """[(seconds, microseconds, frame)] of a bundled classic Ethernet capture."""
    data = (CAPTURES / name).read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1" and struct.unpack("<I", data[20:24])[0] == 1
    records, off = [], 24
    while off < len(data):
        sec, usec, incl, _orig = struct.unpack("<IIII", data[off:off + 16])
        records.append((sec, usec, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return records


def pcap(records, linktype=1, endian="<", nanoseconds=False, snaplen=262144):
    """A classic pcap file: records are (seconds, fraction, frame[, orig_len])."""
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for record in records:
        sec, frac, frame = record[:3]
        orig = record[3] if len(record) > 3 else len(frame)
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), orig) + frame)
    return b"".join(out)


def block(block_type, body, endian="<"):
    """One pcapng block: body padded to 4 bytes, total length before and after."""
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)


def option(code, value, endian="<"):
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(endian="<"):
    return block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def idb(linktype=1, snaplen=0, tsresol=None, tsoffset=None, endian="<"):
    options = b""
    if tsresol is not None:
        options += option(9, bytes([tsresol]), endian)
    if tsoffset is not None:
        options += option(14, struct.pack(endian + "q", tsoffset), endian)
    if options:
        options += option(0, b"", endian)
    return block(1, struct.pack(endian + "HHI", linktype, 0, snaplen) + options, endian)


def epb(interface, timestamp, frame, orig=None, endian="<", options=b""):
    return block(6, struct.pack(endian + "IIIII", interface, timestamp >> 32, timestamp & 0xFFFFFFFF,
                                len(frame), len(frame) if orig is None else orig)
                 + frame + b"\0" * (-len(frame) % 4) + options, endian)


def spb(frame, orig=None, endian="<"):
    return block(3, struct.pack(endian + "I", len(frame) if orig is None else orig) + frame, endian)


def opb(interface, timestamp, frame, endian="<"):
    """The obsolete packet block (type 2)."""
    return block(2, struct.pack(endian + "HHIIII", interface, 0, timestamp >> 32, timestamp & 0xFFFFFFFF,
                                len(frame), len(frame)) + frame, endian)


# --------------------------------------------------------------------------- frames

def ip_checksum(header):
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src, dst, protocol, payload, ident=1, flags_offset=0, options=b""):
    header_len = 20 + len(options)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | header_len // 4, 0, header_len + len(payload), ident,
                         flags_offset, 64, protocol, 0, bytes(src), bytes(dst)) + options
    return header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:] + payload


def ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64, bytes(src), bytes(dst)) + payload


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport, dport, seq, flags, payload=b"", ack=0):
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags, 65535, 0, 0) + payload


def ethernet(ip_packet, vlans=(), ethertype=None):
    """vlans: [(TPID, VLAN id)] outermost first."""
    if ethertype is None:
        ethertype = 0x0800 if ip_packet[0] >> 4 == 4 else 0x86DD
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", ethertype) + ip_packet


def ethernet_payload(frame):
    """(ethertype, IP packet) of an untagged Ethernet frame."""
    return struct.unpack("!H", frame[12:14])[0], frame[14:]
