"""One frame -> its UDP datagram, TCP segment or IP fragment, for every link type read.

Pure ``struct`` on the captured bytes, no objects per layer: this runs for every
frame of a capture. ``decode_frame(linktype, data)`` returns a tuple whose first item
says what it is, or a string naming why the frame is skipped (a counter name):

    (UDP, src, dst, sport, dport, payload, cut)
    (TCP, src, dst, sport, dport, payload, cut, seq, flags)
    (FRAGMENT, key, offset, more, protocol, piece, cut, addrs)
    (ICMP, src, dst, sport, dport, transport, reporter, icmp_type, icmp_code, mtu)

``cut`` is how many bytes of the payload the capture lacks (snap length), ``flags``
the low TCP flag bits (``FIN``, ``SYN``, ``RST``...). A fragment goes to
``ipfrag.Defragmenter``; the datagram it completes comes back through
``decode_reassembled``. Addresses are strings as tshark prints them.

An ICMP tuple is an ICMPv4 "destination unreachable" (type 3, every code; code 4
is "fragmentation needed", with the next-hop ``mtu``) or an ICMPv6 "destination
unreachable" (type 1) or "packet too big" (type 2, ``mtu``) that quotes a UDP or TCP
packet: ``src``...``transport`` are the QUOTED packet's (the direction it was sent
in), ``reporter`` the ICMP's own IP source. Any other ICMP is OTHER_PROTOCOL.
"""

import socket
import struct

UDP = "udp"
TCP = "tcp"
FRAGMENT = "fragment"
ICMP = "icmp"

# Why a frame yields nothing (these are also the counter names in datagrams.Counts).
NON_IP = "non_ip"                       # ARP, LLDP, ... or a link type's non-IP protocol
OTHER_PROTOCOL = "other_protocol"       # IP, but not UDP or TCP (ICMP, ESP, ...)
UNDECODABLE = "undecodable"             # headers that do not fit or contradict themselves
UNSUPPORTED_LINKTYPE = "unsupported_linktype"

FIN, SYN, RST = 0x01, 0x02, 0x04

ETHERNET, NULL, LOOP, RAW, RAW_12, RAW_14, SLL, SLL2, IPV4, IPV6 = 1, 0, 108, 101, 12, 14, 113, 276, 228, 229
LINKTYPES = {ETHERNET: "Ethernet", NULL: "BSD loopback (DLT_NULL)", LOOP: "OpenBSD loopback (DLT_LOOP)",
             RAW: "raw IP", RAW_12: "raw IP", RAW_14: "raw IP", SLL: "Linux cooked (SLL)",
             SLL2: "Linux cooked v2 (SLL2)", IPV4: "raw IPv4", IPV6: "raw IPv6"}

_VLAN = (0x8100, 0x88A8, 0x9100)        # 802.1Q, 802.1ad (QinQ), and the old pre-standard QinQ
_AF_INET6 = (10, 24, 28, 30)            # Linux, OpenBSD/NetBSD, FreeBSD, Darwin
# IPv6 extension headers skipped on the way to the transport header: hop-by-hop,
# routing, destination options, mobility, HIP, shim6 (length in 8-byte units).
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))

_ipv4_head = struct.Struct("!BxHHHxB").unpack_from        # ver/ihl, total, id, flags/offset, protocol
_ipv6_head = struct.Struct("!IHB").unpack_from            # ver/class/flow, payload length, next header
_udp_head = struct.Struct("!HHH").unpack_from
_tcp_head = struct.Struct("!HHI4xH").unpack_from
_u32_le = struct.Struct("<I").unpack_from
_u32_be = struct.Struct("!I").unpack_from
_u16_pair = struct.Struct("!HH").unpack_from

# Address strings, cached by the raw (source + destination) address bytes: a capture
# has few hosts, and formatting costs more than everything else done per packet.
# Readers look up ``NAMES.get(addrs) or name_pair(addrs)``, which saves a call per packet.
NAMES = {}
_NAMES_MAX = 1 << 14


def name_pair(addrs):
    """(source, destination) strings of 8 (IPv4) or 32 (IPv6) address bytes, cached."""
    half = len(addrs) // 2
    family = socket.AF_INET if half == 4 else socket.AF_INET6
    pair = (socket.inet_ntop(family, addrs[:half]), socket.inet_ntop(family, addrs[half:]))
    if len(NAMES) >= _NAMES_MAX:
        NAMES.clear()
    NAMES[addrs] = pair
    return pair


# The common case in one unpack: Ethernet, IPv4 without options, not a fragment, UDP.
_fast_ether_udp = struct.Struct("!12xHBxHxxHxB2x8sHHH").unpack_from


def decode_frame(linktype, data):
    """What one captured frame carries: see the module docstring."""
    try:
        if linktype == ETHERNET:
            if len(data) >= 42:
                ethertype, vihl, total, frag, protocol, addrs, sport, dport, length = _fast_ether_udp(data)
                if (ethertype == 0x0800 and vihl == 0x45 and protocol == 17 and not frag & 0x3FFF
                        and 8 <= length <= total - 20 and 14 + total <= len(data)):
                    names = NAMES.get(addrs) or name_pair(addrs)
                    return UDP, names[0], names[1], sport, dport, data[42:34 + length], 0
            ethertype = (data[12] << 8) | data[13]
            offset = 14
        elif linktype == SLL2:
            ethertype = (data[0] << 8) | data[1]
            offset = 20
        elif linktype == SLL:
            ethertype = (data[14] << 8) | data[15]
            offset = 16
        elif linktype in (RAW, RAW_12, RAW_14, IPV4, IPV6):
            version = data[0] >> 4
            return _ipv4(data, 0) if version == 4 else _ipv6(data, 0) if version == 6 else UNDECODABLE
        elif linktype == NULL or linktype == LOOP:
            family = _u32_be(data)[0] if linktype == LOOP else _u32_le(data)[0]
            if family & 0xFFFF0000:
                # DLT_NULL holds the writer's host byte order, which the file does not say;
                # AF values are small, so a large one was written the other way round.
                family = struct.unpack("<I", struct.pack(">I", family))[0]
            if family == 2:
                return _ipv4(data, 4)
            return _ipv6(data, 4) if family in _AF_INET6 else NON_IP
        else:
            return UNSUPPORTED_LINKTYPE
        while ethertype in _VLAN:                               # stacked tags: QinQ
            ethertype = (data[offset + 2] << 8) | data[offset + 3]
            offset += 4
        if ethertype == 0x0800:
            return _ipv4(data, offset)
        if ethertype == 0x86DD:
            return _ipv6(data, offset)
        return NON_IP
    except (IndexError, struct.error):
        return UNDECODABLE


def _ipv4(data, o):
    vihl, total, ident, frag, protocol = _ipv4_head(data, o)
    ihl = (vihl & 15) << 2
    if vihl >> 4 != 4 or ihl < 20:
        return UNDECODABLE
    if total == 0:
        total = len(data) - o           # a segmentation-offload super-packet (as Wireshark assumes)
    elif total < ihl:
        return UNDECODABLE
    end = o + total
    cut = 0
    if end > len(data):
        cut = end - len(data)
        end = len(data)
        if o + ihl > end:
            return UNDECODABLE
    addrs = data[o + 12:o + 20]
    if frag & 0x3FFF:                   # more fragments, or a non-zero offset
        return (FRAGMENT, (addrs, ident, protocol), (frag & 0x1FFF) << 3, frag & 0x2000,
                protocol, data[o + ihl:end], cut, addrs)
    return _transport(protocol, addrs, data, o + ihl, end, cut)


def _ipv6(data, o):
    head, length, nh = _ipv6_head(data, o)
    if head >> 28 != 6:
        return UNDECODABLE
    p = o + 40
    end = p + length if length else len(data)       # 0: a jumbogram or offload super-packet
    cut = 0
    if end > len(data):
        cut = end - len(data)
        end = len(data)
    addrs = data[o + 8:p]
    while nh in _IPV6_EXT or nh == 44 or nh == 51:
        if p + 8 > end:
            return UNDECODABLE
        if nh == 44:                                        # fragment header
            offset_flags, ident = struct.unpack_from("!HI", data, p + 2)
            if offset_flags & 0xFFF9:                       # offset or M flag: a real fragment
                return (FRAGMENT, (addrs, ident), offset_flags & 0xFFF8, offset_flags & 1,
                        data[p], data[p + 8:end], cut, addrs)
            nh, p = data[p], p + 8                          # an atomic fragment: just skip it
        elif nh == 51:                                      # AH: length in 4-byte units, minus 2
            nh, p = data[p], p + ((data[p + 1] + 2) << 2)
        else:
            nh, p = data[p], p + ((data[p + 1] + 1) << 3)
    if p > end:
        return UNDECODABLE
    return _transport(nh, addrs, data, p, end, cut)


def _transport(protocol, addrs, data, o, end, cut):
    if protocol == 17:
        if o + 8 > end:
            return UNDECODABLE
        sport, dport, length = _udp_head(data, o)
        stop = o + length
        if length < 8:
            if length:
                return UNDECODABLE
            stop = end                                      # 0: an IPv6 jumbogram
        elif stop > end:
            if not cut:
                return UNDECODABLE
            cut = stop - end                                # what the snap length cut off
            stop = end
        else:
            cut = 0                                         # the cut was past the datagram
        names = NAMES.get(addrs) or name_pair(addrs)
        return UDP, names[0], names[1], sport, dport, data[o + 8:stop], cut
    if protocol == 6:
        if o + 20 > end:
            return UNDECODABLE
        sport, dport, seq, offset_flags = _tcp_head(data, o)
        header = (offset_flags >> 10) & 0x3C
        if header < 20 or o + header > end:
            return UNDECODABLE
        names = NAMES.get(addrs) or name_pair(addrs)
        return TCP, names[0], names[1], sport, dport, data[o + header:end], cut, seq, offset_flags & 0x3F
    if protocol == 1 or protocol == 58:
        return _icmp(protocol, addrs, data, o, end)
    return OTHER_PROTOCOL


_ICMP_ERRORS = {1: (3,), 58: (1, 2)}  # protocol -> the types read: unreachable (v4, v6), too big (v6)
_TRANSPORTS = {17: UDP, 6: TCP}


def _icmp(protocol, addrs, data, o, end):
    """An ICMP error quoting a UDP/TCP packet (see the module docstring), else OTHER_PROTOCOL.
    The quote holds the packet's IP header and at least the first 8 bytes after it
    (RFC 792; RFC 4443 quotes as much as fits): the ports are its first 4."""
    if o + 8 > end:
        return OTHER_PROTOCOL
    kind, code = data[o], data[o + 1]
    if kind not in _ICMP_ERRORS[protocol]:
        return OTHER_PROTOCOL
    mtu = None
    if kind == 2 or code == 4 and kind == 3:
        mtu = _u32_be(data, o + 4)[0] if kind == 2 else _u16_pair(data, o + 4)[1]
    q = o + 8  # the quoted packet
    if protocol == 1:
        if q + 20 > end or data[q] >> 4 != 4:
            return OTHER_PROTOCOL
        ihl = (data[q] & 15) << 2
        _, _, _, frag, quoted = _ipv4_head(data, q)
        if ihl < 20 or frag & 0x1FFF:  # a later fragment quotes no ports
            return OTHER_PROTOCOL
        inner, p = data[q + 12:q + 20], q + ihl
    else:
        if q + 40 > end or data[q] >> 4 != 6:
            return OTHER_PROTOCOL
        inner, quoted, p = data[q + 8:q + 40], data[q + 6], q + 40
        while quoted in _IPV6_EXT or quoted == 44 or quoted == 51:
            if p + 8 > end:
                return OTHER_PROTOCOL
            if quoted == 44:
                if _u16_pair(data, p + 2)[0] & 0xFFF8:  # a later fragment quotes no ports
                    return OTHER_PROTOCOL
                quoted, p = data[p], p + 8
            else:
                quoted, p = data[p], p + ((data[p + 1] + (2 if quoted == 51 else 1)) << (2 if quoted == 51 else 3))
    transport = _TRANSPORTS.get(quoted)
    if transport is None or p + 4 > end:
        return OTHER_PROTOCOL
    sport, dport = _u16_pair(data, p)
    names = NAMES.get(inner) or name_pair(inner)
    reporter = (NAMES.get(addrs) or name_pair(addrs))[0]
    return ICMP, names[0], names[1], sport, dport, transport, reporter, kind, code, mtu


def decode_reassembled(key, protocol, payload):
    """The UDP/TCP tuple (or skip reason) of a datagram ``ipfrag`` has put back together;
    ``key`` and ``protocol`` as in the FRAGMENT tuple of its first fragment."""
    addrs = key[0]
    try:
        if len(addrs) == 32:
            # IPv6: the fragmentable part may start with more extension headers.
            p, end = 0, len(payload)
            while protocol in _IPV6_EXT or protocol == 51:
                if p + 8 > end:
                    return UNDECODABLE
                step = (payload[p + 1] + 2) << 2 if protocol == 51 else (payload[p + 1] + 1) << 3
                protocol, p = payload[p], p + step
            if protocol == 44 or p > end:
                return UNDECODABLE
            return _transport(protocol, addrs, payload, p, end, 0)
        return _transport(protocol, addrs, payload, 0, len(payload), 0)
    except (IndexError, struct.error):
        return UNDECODABLE
