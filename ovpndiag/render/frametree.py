"""-V: the frame a packet came in, and its link, IP and UDP/TCP headers, as tshark -V
names them (its main fields; link-layer bits and checksum verification left out).

``frame_lines(lines, get, kept)``: ``get`` reads the record's fields, ``kept`` is
``(linktype, captured bytes, length on the wire)`` of its frame (None when that was
not kept: then one summary line). Headers are read with ``struct`` straight from
the frame; anything cut short ends the tree there with a note, never an error.
A datagram put together from IP fragments is shown with the IP header of its last
fragment (the frame that completed it) and the UDP header from the first.
"""

import math
import struct

from ..capture.framedecode import LINKTYPES, NAMES, name_pair
from .line import endpoint, utc, utc_text

ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x8100: "802.1Q Virtual LAN", 0x88A8: "802.1ad",
              0x9100: "802.1Q (QinQ)", 0x0806: "ARP"}
_VLAN = (0x8100, 0x88A8, 0x9100)
IP_PROTOCOLS = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 44: "IPv6 Fragment", 0: "IPv6 Hop-by-Hop Option",
                43: "Routing Header for IPv6", 60: "Destination Options for IPv6", 51: "AH", 50: "ESP"}
SLL_PACKET_TYPES = {0: "Unicast to us", 1: "Broadcast", 2: "Multicast", 3: "Unicast to another host",
                    4: "Sent by us"}
_TCP_FLAGS = ((0x100, "AE"), (0x80, "CWR"), (0x40, "ECE"), (0x20, "URG"), (0x10, "ACK"), (0x08, "PSH"),
              (0x04, "RST"), (0x02, "SYN"), (0x01, "FIN"))

_IPV4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_IPV6 = struct.Struct("!IHBB16s16s").unpack_from
_UDP = struct.Struct("!HHHH").unpack_from
_TCP = struct.Struct("!HHIIHHHH").unpack_from

def _arrival(time):
    """(Arrival Time, Epoch Time) to the microsecond, from the exact time of a far
    date (capture.pcapfile.Instant: a float is coarser than a microsecond there)."""
    exact = getattr(time, "exact", None)
    if exact is not None:  # cut, not rounded: tshark's digits, fewer of them
        whole = math.floor(exact)
        micros = math.floor((exact - whole) * 1000000)
    else:  # a float near today's dates is within a quarter microsecond of the time
        whole = math.floor(time)
        micros = round((time - whole) * 1000000)
        if micros >= 1000000:
            whole, micros = whole + 1, micros - 1000000
    date = utc_text(whole)
    if not date.endswith(" UTC"):  # "time not representable"
        return date, "%d.%06d" % (whole, micros)
    return "%s.%06d UTC" % (date[:-4], micros), "%d.%06d" % (whole, micros)


def frame_lines(lines, get, kept) -> None:
    frame, time = get("frame"), get("time")
    if kept is None:
        lines.append(f"Frame {frame}: {get('length')} bytes of OpenVPN at {utc(time)} "
                     f"(+{get('relative_time'):.6f} s), {endpoint(get('src'), get('sport'))} -> "
                     f"{endpoint(get('dst'), get('dport'))} {get('transport').upper()}")
        return
    linktype, data, orig_len = kept
    arrival, epoch = _arrival(time)
    lines.append("Frame %d: %d bytes on wire (%d bits), %d bytes captured (%d bits)\n"
                 "    Encapsulation type: %s (%d)\n"
                 "    Arrival Time: %s\n"
                 "    Epoch Time: %s seconds\n"
                 "    [Time since first frame: %.6f seconds]"
                 % (frame, orig_len, orig_len * 8, len(data), len(data) * 8, LINKTYPES.get(linktype, "Unknown"),
                    linktype, arrival, epoch, get("relative_time")))
    try:
        _link(lines, get, linktype, data)
    except (IndexError, struct.error):
        lines.append("[Frame too short for its headers]")


def _link(lines, get, linktype, data):
    add = lines.append
    if linktype == 1:  # Ethernet
        ethertype = data[12] << 8 | data[13]
        add("Ethernet II, Src: %s, Dst: %s\n    Type: %s (0x%04x)"
            % (_mac(data[6:12]), _mac(data[0:6]), ETHERTYPES.get(ethertype, "Unknown"), ethertype))
        offset = 14
    elif linktype == 113:  # Linux cooked v1
        packet_type, _hatype, address_length = struct.unpack_from("!HHH", data)
        ethertype = data[14] << 8 | data[15]
        add("Linux cooked capture v1\n    Packet type: %s (%d)\n    Source: %s\n    Protocol: %s (0x%04x)"
            % (SLL_PACKET_TYPES.get(packet_type, "Unknown"), packet_type, _mac(data[6:6 + min(address_length, 8)]),
               ETHERTYPES.get(ethertype, "Unknown"), ethertype))
        offset = 16
    elif linktype == 276:  # Linux cooked v2
        ethertype, _reserved, interface, _hatype, packet_type, address_length = struct.unpack_from("!HHIHBB", data)
        add("Linux cooked capture v2\n    Protocol: %s (0x%04x)\n    Interface index: %d\n    Packet type: %s (%d)\n"
            "    Source: %s" % (ETHERTYPES.get(ethertype, "Unknown"), ethertype, interface,
                               SLL_PACKET_TYPES.get(packet_type, "Unknown"), packet_type,
                               _mac(data[12:12 + min(address_length, 8)])))
        offset = 20
    elif linktype in (0, 108):  # BSD / OpenBSD loopback: a 4-byte address family
        family = struct.unpack_from(">I" if linktype == 108 else "<I", data)[0]
        if family & 0xFFFF0000:
            family = struct.unpack("<I", struct.pack(">I", family))[0]
        add(f"Null/Loopback\n    Family: {'IP' if family == 2 else 'IPv6'} ({family})")
        _ip(lines, get, data, 4)
        return
    else:  # raw IP
        add("Raw packet data")
        _ip(lines, get, data, 0)
        return
    while ethertype in _VLAN:
        tag = "IEEE 802.1ad" if ethertype == 0x88A8 else "802.1Q Virtual LAN"  # (a provider's outer tag)
        tci, ethertype = struct.unpack_from("!HH", data, offset)
        add("%s, PRI: %d, DEI: %d, ID: %d\n    Type: %s (0x%04x)"
            % (tag, tci >> 13, tci >> 12 & 1, tci & 0xFFF, ETHERTYPES.get(ethertype, "Unknown"), ethertype))
        offset += 4
    _ip(lines, get, data, offset)


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _ip(lines, get, data, offset):
    version = data[offset] >> 4
    if version == 4:
        vihl, tos, total, ident, frag, ttl, protocol, checksum, src, dst = _IPV4(data, offset)
        names = NAMES.get(src + dst) or name_pair(src + dst)
        flags = [word for bit, word in ((0x4000, "Don't fragment"), (0x2000, "More fragments")) if frag & bit]
        header = (vihl & 15) * 4
        lines.append(
            "Internet Protocol Version 4, Src: %s, Dst: %s\n"
            "    Header Length: %d bytes (%d)\n"
            "    Differentiated Services Field: 0x%02x (DSCP: %d, ECN: %d)\n"
            "    Total Length: %d\n"
            "    Identification: 0x%04x (%d)\n"
            "    Flags: 0x%x%s\n"
            "    Fragment Offset: %d\n"
            "    Time to Live: %d\n"
            "    Protocol: %s (%d)\n"
            "    Header Checksum: 0x%04x"
            % (names[0], names[1], header, vihl & 15, tos, tos >> 2, tos & 3, total, ident, ident, frag >> 13,
               (", " + ", ".join(flags)) if flags else "", (frag & 0x1FFF) * 8, ttl,
               IP_PROTOCOLS.get(protocol, "Unknown"), protocol, checksum))
        if frag & 0x1FFF:
            lines.append(f"    [This is the last of the IP fragments the datagram was reassembled from]")
            _transport(lines, get, None, 0, protocol, 0)
            return
        _transport(lines, get, data, offset + header, protocol, offset + total if total else len(data))
    elif version == 6:
        head, length, next_header, hops, src, dst = _IPV6(data, offset)
        names = NAMES.get(src + dst) or name_pair(src + dst)
        lines.append(
            "Internet Protocol Version 6, Src: %s, Dst: %s\n"
            "    Traffic Class: 0x%02x\n"
            "    Flow Label: 0x%05x\n"
            "    Payload Length: %d\n"
            "    Next Header: %s (%d)\n"
            "    Hop Limit: %d"
            % (names[0], names[1], head >> 20 & 0xFF, head & 0xFFFFF, length,
               IP_PROTOCOLS.get(next_header, "Unknown"), next_header, hops))
        position = offset + 40
        while next_header in (0, 43, 60, 44, 51):
            following = data[position]
            if next_header == 44:
                offset_flags, ident = struct.unpack_from("!HI", data, position + 2)
                lines.append("    Fragment Header for IPv6\n        Next header: %s (%d)\n"
                             "        Offset: %d\n        More Fragments: %s\n        Identification: 0x%08x"
                             % (IP_PROTOCOLS.get(following, "Unknown"), following, offset_flags & 0xFFF8,
                                "Yes" if offset_flags & 1 else "No", ident))
                if offset_flags & 0xFFF8:
                    lines.append("    [This is the last of the IP fragments the datagram was reassembled from]")
                    _transport(lines, get, None, 0, following, 0)
                    return
                position += 8
            else:
                size = (data[position + 1] + 2) * 4 if next_header == 51 else (data[position + 1] + 1) * 8
                lines.append(f"    {IP_PROTOCOLS[next_header]}: {size} bytes, next header "
                             f"{IP_PROTOCOLS.get(following, 'Unknown')} ({following})")
                position += size
            next_header = following
        _transport(lines, get, data, position, next_header, offset + 40 + length if length else len(data))
    else:
        lines.append(f"[Not IP: version {version}]")


def _transport(lines, get, data, offset, protocol, end):
    if data is None:  # reassembled: the transport header is in the first fragment
        if protocol == 17:
            lines.append("User Datagram Protocol, Src Port: %d, Dst Port: %d\n    [Reassembled from IP fragments]"
                         % (get("sport"), get("dport")))
        return
    if protocol == 17:
        sport, dport, length, checksum = _UDP(data, offset)
        lines.append("User Datagram Protocol, Src Port: %d, Dst Port: %d\n"
                     "    Length: %d\n"
                     "    Checksum: 0x%04x\n"
                     "    UDP payload (%d bytes)"
                     % (sport, dport, length, checksum, max(0, length - 8)))
    elif protocol == 6:
        sport, dport, seq, ack, offset_flags, window, checksum, urgent = _TCP(data, offset)
        header = (offset_flags >> 12) * 4
        flags = offset_flags & 0x1FF
        payload = min(end, len(data)) - offset - header
        lines.append("Transmission Control Protocol, Src Port: %d, Dst Port: %d, Seq: %d, Ack: %d, Len: %d\n"
                     "    Sequence Number (raw): %d\n"
                     "    Acknowledgment Number (raw): %d\n"
                     "    Header Length: %d bytes (%d)\n"
                     "    Flags: 0x%03x (%s)\n"
                     "    Window: %d\n"
                     "    Checksum: 0x%04x\n"
                     "    TCP payload (%d bytes)"
                     % (sport, dport, seq, ack, payload, seq, ack, header, header // 4, flags,
                        ", ".join(name for bit, name in _TCP_FLAGS if flags & bit) or "none", window, checksum,
                        payload))
