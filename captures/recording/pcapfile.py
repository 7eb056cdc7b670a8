"""Just enough of a pcap/pcapng reader for the checks: the link types recorded here,
VLAN tags, IPv4/IPv6 with naive fragment reassembly, UDP, and TCP's 2-byte framing."""

from __future__ import annotations

import struct
from pathlib import Path

from .scenario import Scenario


def read_pcap(path: Path) -> list[tuple[float, int, bytes]]:
    """[(time, link type, frame)] of a classic pcap or pcapng file."""
    data = path.read_bytes()
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(path, data)
    if magic == b"\xd4\xc3\xb2\xa1":
        endian, frac = "<", 1e-6
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian, frac = ">", 1e-6
    elif magic == b"\x4d\x3c\xb2\xa1":
        endian, frac = "<", 1e-9
    else:
        raise ValueError(f"{path}: not a pcap or pcapng file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out, off = [], 24
    while off + 16 <= len(data):
        sec, sub, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append((sec + sub * frac, linktype, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return out


def _read_pcapng(path: Path, data: bytes) -> list[tuple[float, int, bytes]]:
    """Just what dumpcap writes: little-endian sections, interfaces, enhanced packets."""
    out, off, linktypes, resolution = [], 0, [], []
    while off + 12 <= len(data):
        btype, blen = struct.unpack("<II", data[off:off + 8])
        if btype == 0x0A0D0D0A:
            if data[off + 8:off + 12] != b"\x4d\x3c\x2b\x1a":
                raise ValueError(f"{path}: big-endian pcapng")
            linktypes, resolution = [], []
        elif btype == 1:
            linktypes.append(struct.unpack("<H", data[off + 8:off + 10])[0])
            units, opt = 1e-6, off + 16
            while opt + 4 <= off + blen - 4:
                code, length = struct.unpack("<HH", data[opt:opt + 4])
                if code == 0:
                    break
                if code == 9:
                    units = 10.0 ** -data[opt + 4]
                opt += 4 + length + (-length % 4)
            resolution.append(units)
        elif btype == 6:
            iface, hi, lo, incl, _orig = struct.unpack("<IIIII", data[off + 8:off + 28])
            out.append((((hi << 32) | lo) * resolution[iface], linktypes[iface],
                        data[off + 28:off + 28 + incl]))
        off += blen
    return out


def link_payload(linktype: int, frame: bytes) -> tuple[list[int], bytes | None]:
    """(VLAN ids, IP packet or None) of a frame."""
    vlans = []
    if linktype in (1, 113, 276):
        offset = {1: 12, 113: 14, 276: 0}[linktype]
        ethertype = struct.unpack("!H", frame[offset:offset + 2])[0]
        while ethertype in (0x8100, 0x88A8):
            vlans.append(struct.unpack("!H", frame[offset + 2:offset + 4])[0] & 0x0FFF)
            offset += 4
            ethertype = struct.unpack("!H", frame[offset:offset + 2])[0]
        start = 20 + 4 * len(vlans) if linktype == 276 else offset + 2
        return vlans, frame[start:] if ethertype in (0x0800, 0x86DD) else None
    if linktype == 101:
        return vlans, frame
    raise ValueError(f"unexpected linktype {linktype}")


def parse_capture(path: Path, sc: Scenario) -> tuple[list[tuple[str, bytes]], dict]:
    """([(direction, openvpn packet)] with direction 'c2s' or 's2c', facts about the file).

    For TCP: the 2-byte length framing over the in-order byte stream.
    """
    proto_num = 17 if sc.transport == "udp" else 6
    streams = {"c2s": b"", "s2c": b""}
    pkts = []
    info = {"linktypes": set(), "vlans": set(), "fragments": 0, "reassembled_opcodes": set(),
            "client_ports": []}    # the client's port of each packet
    fragments = {}
    for _ts, linktype, frame in read_pcap(path):
        info["linktypes"].add(linktype)
        vlans, ip_packet = link_payload(linktype, frame)
        if vlans:
            info["vlans"].add(tuple(vlans))
        if ip_packet is None:
            continue
        if ip_packet[0] >> 4 == 4:
            ihl = (ip_packet[0] & 0x0F) * 4
            proto, l4 = ip_packet[9], ip_packet[ihl:struct.unpack("!H", ip_packet[2:4])[0]]
            ident, frag = struct.unpack("!HH", ip_packet[4:8])
            frag &= 0x3FFF                  # offset and MF, not DF
            if frag:
                key, offset, more = (ip_packet[12:20], ident), (frag & 0x1FFF) * 8, frag & 0x2000
        else:
            proto, l4 = ip_packet[6], ip_packet[40:40 + struct.unpack("!H", ip_packet[4:6])[0]]
            frag = 0
            if proto == 44:
                proto, frag, ident = struct.unpack("!BxHI", l4[:8])
                key, offset, more, l4 = (ip_packet[8:40], ident), frag & 0xFFF8, frag & 1, l4[8:]
                frag = frag or 1
        if frag:
            info["fragments"] += 1
            pieces = fragments.setdefault(key, {})
            pieces[offset] = (more, l4)
            l4, complete = b"", False
            for off in sorted(pieces):
                if off != len(l4):
                    break
                l4 += pieces[off][1]
                if not pieces[off][0]:
                    complete = True
                    break
            if not complete:
                continue
            del fragments[key]
        if proto != proto_num:
            continue
        sport, dport = struct.unpack("!HH", l4[:4])
        if dport == sc.port:
            direction = "c2s"
        elif sport == sc.port:
            direction = "s2c"
        else:
            continue
        client_port = sport if direction == "c2s" else dport
        if proto == 17:
            pkts.append((direction, l4[8:]))
            info["client_ports"].append(client_port)
            if frag:
                info["reassembled_opcodes"].add(l4[8] >> 3)
        else:
            streams[direction] += l4[(l4[12] >> 4) * 4:]
            buf = streams[direction]
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                pkts.append((direction, buf[2:2 + n]))
                info["client_ports"].append(client_port)
                buf = buf[2 + n:]
            streams[direction] = buf
    return pkts, info


def openvpn_packets(path: Path, sc: Scenario) -> list[tuple[str, bytes]]:
    return parse_capture(path, sc)[0]
