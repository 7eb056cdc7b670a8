"""ovpndiag.capture.framedecode on every link type, VLAN stack, IP header shape and damage.

Frames are real ones (udp-plain, udp6-tls-auth, tcp-plain) re-wrapped with struct;
the real captures in those link types are checked end to end in test_capture_read.
"""

import random
import shutil
import socket
import struct
import subprocess

import pytest

from capture_files import ethernet, ethernet_payload, ipv4, ipv6, pcap, real_records, tcp, udp
from ovpndiag.capture import Transport, read_transport
from ovpndiag.capture.framedecode import (FRAGMENT, NON_IP, OTHER_PROTOCOL, TCP, UDP, UNDECODABLE,
                                     UNSUPPORTED_LINKTYPE, decode_frame)

UDP4 = [frame for _s, _u, frame in real_records("udp-plain.pcap")]
UDP6 = [frame for _s, _u, frame in real_records("udp6-tls-auth.pcap")]
TCP4 = [frame for _s, _u, frame in real_records("tcp-plain.pcap")]
REAL = UDP4[:5] + UDP6[:5] + TCP4[:8]


def rewrap(frame, linktype, **kw):
    """The IP packet of a real Ethernet frame under another link-layer header."""
    ethertype, packet = ethernet_payload(frame)
    version = packet[0] >> 4
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, ethertype) + packet
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 1, 772, 0, 6, b"\0" * 8) + packet
    if linktype in (101, 12, 14, 228, 229):
        return packet
    if linktype == 0:
        family = kw.get("family", 2 if version == 4 else 30)
        return struct.pack(kw.get("endian", "<") + "I", family) + packet
    if linktype == 108:
        return struct.pack("!I", 2 if version == 4 else 24) + packet
    raise ValueError(linktype)


@pytest.mark.parametrize("linktype, kw", [
    (113, {}), (276, {}), (101, {}), (12, {}), (14, {}), (108, {}),
    (0, {"endian": "<"}), (0, {"endian": ">"}),
])
def test_every_link_type_gives_what_ethernet_gives(linktype, kw):
    for frame in REAL:
        if linktype in (228, 229):
            continue
        assert decode_frame(linktype, rewrap(frame, linktype, **kw)) == decode_frame(1, frame)


@pytest.mark.parametrize("family", [10, 24, 28, 30])
def test_bsd_loopback_knows_every_systems_ipv6_family(family):
    for frame in UDP6[:3]:
        for endian in "<>":
            assert decode_frame(0, rewrap(frame, 0, family=family, endian=endian)) == decode_frame(1, frame)


def test_raw_ipv4_and_ipv6_link_types():
    assert decode_frame(228, rewrap(UDP4[0], 228)) == decode_frame(1, UDP4[0])
    assert decode_frame(229, rewrap(UDP6[0], 229)) == decode_frame(1, UDP6[0])


@pytest.mark.parametrize("tags", [
    [(0x8100, 100)], [(0x88A8, 100), (0x8100, 200)], [(0x9100, 1), (0x88A8, 2), (0x8100, 4095)]])
def test_vlan_tags_however_many(tags):
    for frame in REAL:
        ethertype, packet = ethernet_payload(frame)
        tagged = ethernet(packet, vlans=tags, ethertype=ethertype)
        assert decode_frame(1, tagged) == decode_frame(1, frame)
        # Linux cooked captures: the protocol field holds the first TPID, the rest follows.
        sll2 = struct.pack("!HHIHBB8s", tags[0][0], 0, 1, 1, 0, 6, b"\0" * 8) + tagged[14:]
        assert decode_frame(276, sll2) == decode_frame(1, frame)


def test_what_is_skipped_and_why():
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    assert decode_frame(1, arp) == NON_IP
    assert decode_frame(1, ethernet(b"\0" * 40, ethertype=0x88CC)) == NON_IP            # LLDP
    assert decode_frame(1, b"\0" * 12 + b"\x00\x2e" + b"\0" * 46) == NON_IP              # 802.3 length
    assert decode_frame(0, struct.pack("<I", 7) + b"\0" * 40) == NON_IP                  # AF 7 (OSI)
    assert decode_frame(105, UDP4[0]) == UNSUPPORTED_LINKTYPE                            # 802.11
    icmp = ipv4(b"\x7f\0\0\1", b"\x7f\0\0\1", 1, b"\x08\0" + b"\0" * 30)
    assert decode_frame(101, icmp) == OTHER_PROTOCOL
    esp = ipv6(bytes(16), bytes(15) + b"\1", 50, b"\0" * 40)
    assert decode_frame(101, esp) == OTHER_PROTOCOL
    assert decode_frame(101, b"\x50" + b"\0" * 40) == UNDECODABLE                        # IP version 5


def _udp_tuple(frame):
    result = decode_frame(1, frame)
    assert result[0] == UDP
    return result


def test_ipv4_options_are_skipped():
    _, packet = ethernet_payload(UDP4[2])
    header_len = (packet[0] & 15) * 4
    src, dst, segment = packet[12:16], packet[16:20], packet[header_len:]
    for options in (b"\x01" * 4, b"\x94\x04\0\0", b"\x07\x27\x04" + b"\0" * 37):  # NOP, router alert, record route
        got = decode_frame(101, ipv4(src, dst, 17, segment, options=options))
        assert got == _udp_tuple(UDP4[2])


def test_ipv6_extension_headers_are_skipped():
    _, packet = ethernet_payload(UDP6[2])
    src, dst, segment = packet[8:24], packet[24:40], packet[40:]
    hop_by_hop = bytes([43, 0, 5, 2, 0, 0, 1, 0])          # next: routing; router alert
    routing = bytes([60, 2, 0, 0, 0, 0, 0, 0]) + bytes(16)  # next: destination options
    dest_opts = bytes([44, 0, 1, 4, 0, 0, 0, 0])           # next: fragment; PadN
    atomic_fragment = bytes([51, 0, 0, 0, 0, 0, 0, 7])      # offset 0, M=0; next: AH
    ah = bytes([17, 4]) + bytes(22)                        # next: UDP; (4 + 2) * 4 = 24 bytes
    packet = ipv6(src, dst, 0, hop_by_hop + routing + dest_opts + atomic_fragment + ah + segment)
    assert decode_frame(101, packet) == _udp_tuple(UDP6[2])
    # An extension header that runs past the packet is damage, not a crash.
    assert decode_frame(101, ipv6(src, dst, 0, bytes([60, 200]) + bytes(6))) == UNDECODABLE


def test_addresses_are_formatted_and_ports_read():
    kind, src, dst, sport, dport, payload, cut = _udp_tuple(UDP6[0])
    assert (src, dst) == ("::1", "::1") and cut == 0 and len(payload) > 0
    kind, src, dst, sport, dport, payload, cut = _udp_tuple(UDP4[0])
    assert (src, dst, dport) == ("127.0.0.1", "127.0.0.1", 1194)


def test_snap_length_cuts_are_reported_not_hidden():
    frame = UDP4[3]
    full = _udp_tuple(frame)
    for keep in (42, 43, 100, len(frame) - 1):
        kind, src, dst, sport, dport, payload, cut = decode_frame(1, frame[:keep])
        assert kind == UDP and payload == full[5][:keep - 42] and cut == len(frame) - keep
    for keep in (14, 20, 33, 41):             # IP or UDP header incomplete
        assert decode_frame(1, frame[:keep]) == UNDECODABLE
    kind, *_rest, payload, cut, seq, flags = decode_frame(1, TCP4[5][:80])
    assert kind == TCP and cut == len(TCP4[5]) - 80


def test_ethernet_padding_is_not_payload():
    _, packet = ethernet_payload(UDP4[0])
    small = ipv4(packet[12:16], packet[16:20], 17, udp(1000, 1194, b"abc"))
    kind, *_rest, payload, cut = decode_frame(1, ethernet(small) + b"\0" * 20)
    assert (kind, payload, cut) == (UDP, b"abc", 0)


def test_inconsistent_lengths_are_undecodable():
    src, dst = b"\x7f\0\0\1", b"\x7f\0\0\2"
    good = ipv4(src, dst, 17, udp(1, 2, b"x" * 20))
    assert decode_frame(101, good)[0] == UDP
    assert decode_frame(101, good[:2] + struct.pack("!H", 10) + good[4:]) == UNDECODABLE      # total < header
    assert decode_frame(101, b"\x44" + good[1:]) == UNDECODABLE                              # IHL 4
    bad_udp = ipv4(src, dst, 17, struct.pack("!HHHH", 1, 2, 4, 0) + b"x" * 20)         # UDP length 4
    assert decode_frame(101, bad_udp) == UNDECODABLE
    long_udp = ipv4(src, dst, 17, struct.pack("!HHHH", 1, 2, 200, 0) + b"x" * 20)      # past the IP end
    assert decode_frame(101, long_udp) == UNDECODABLE
    bad_tcp = ipv4(src, dst, 6, tcp(1, 2, 0, 0x10)[:12] + b"\x40\x10" + bytes(6))      # data offset 4
    assert decode_frame(101, bad_tcp) == UNDECODABLE
    # A zero total length is what offload gives for a super-packet: the captured length counts.
    tso = good[:2] + b"\0\0" + good[4:]
    assert decode_frame(101, tso)[0] == UDP


def test_fragments_are_handed_on():
    src, dst = b"\x7f\0\0\1", b"\x7f\0\0\2"
    first = decode_frame(101, ipv4(src, dst, 17, b"x" * 16, ident=77, flags_offset=0x2000))
    assert first[:5] == (FRAGMENT, (src + dst, 77, 17), 0, 0x2000, 17)
    last = decode_frame(101, ipv4(src, dst, 17, b"y" * 8, ident=77, flags_offset=2))
    assert last[:5] == (FRAGMENT, (src + dst, 77, 17), 16, 0, 17) and last[5] == b"y" * 8
    dont_fragment = decode_frame(101, ipv4(src, dst, 17, udp(1, 2, b"z"), flags_offset=0x4000))
    assert dont_fragment[0] == UDP


SKIP_REASONS = {NON_IP, OTHER_PROTOCOL, UNDECODABLE, UNSUPPORTED_LINKTYPE}


def _well_formed(result, data):
    """A skip reason, or a tuple of the documented shape whose payload is bytes of the frame."""
    if isinstance(result, str):
        return result in SKIP_REASONS
    kind, payload = result[0], result[5]
    sizes = {UDP: 7, TCP: 9, FRAGMENT: 8}
    if kind not in sizes or len(result) != sizes[kind] or not isinstance(payload, bytes) or payload not in data:
        return False
    if kind == FRAGMENT:
        return True
    socket.inet_pton(socket.AF_INET6 if ":" in result[1] else socket.AF_INET, result[1])  # a real address
    return 0 <= result[3] < 65536 and 0 <= result[4] < 65536 and result[6] >= 0


def test_damaged_ip_decodes_alike_under_every_link_type():
    """Damaged IP packets (bytes changed, cut short) never raise, give a skip reason or a
    well-formed tuple, and the same one whichever link-layer header carries them: Ethernet's
    fast path and the general path agree on damage too."""
    rng = random.Random(4)
    outcomes = set()
    for frame in REAL:
        for _ in range(300):
            ethertype, packet = ethernet_payload(frame)
            data = bytearray(packet)
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:  # a length field (IPv4 total, IPv6 payload, UDP) near its truth
                    at = rng.choice([2, 24] if data[0] >> 4 == 4 else [4, 44])
                    data[at:at + 2] = max(0, len(data) + rng.randint(-30, 10)).to_bytes(2, "big")
                else:  # any byte of the headers, mostly
                    position = rng.randrange(min(len(data), 64 if rng.random() < 0.8 else len(data)))
                    value = rng.randrange(256)
                    data[position] = value if position else (data[0] & 0xF0) | (value & 0x0F)  # keep the version
            if rng.random() < 0.3:
                data = data[:rng.randint(1, len(data))]
            data = bytes(data)
            expected = decode_frame(101, data)
            assert _well_formed(expected, data), (data.hex(), expected)
            for linktype in (113, 276, 0, 108):
                assert decode_frame(linktype, rewrap(ethernet(data), linktype)) == expected, (linktype, data.hex())
            assert decode_frame(1, ethernet(data, ethertype=ethertype)) == expected, data.hex()
            outcomes.add(expected if isinstance(expected, str) else expected[0])
    assert outcomes >= {UDP, TCP, UNDECODABLE, OTHER_PROTOCOL}  # the damage reached every branch


def test_any_bytes_under_any_link_type_give_a_skip_reason_or_a_well_formed_tuple():
    rng = random.Random(5)
    for frame in REAL:
        for _ in range(200):
            data = bytearray(frame)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[:rng.randint(0, len(data))])
            for linktype in (1, 113, 276, 101, 0, 108, 147):
                result = decode_frame(linktype, data)
                assert _well_formed(result, data), (linktype, data.hex(), result)


def test_ipv6_addresses_are_written_as_tshark_writes_them(tmp_path):
    addresses = ["::1", "::", "fe80::1", "2001:db8::1:0:0:1", "2001:db8:0:0:1::1", "1::",
                 "::ffff:192.0.2.1", "fd77:26::2", "2001:db8:1:2:3:4:5:6", "ff02::1:ff00:1"]
    frames = []
    for n, address in enumerate(addresses):
        raw = socket.inet_pton(socket.AF_INET6, address)
        frames.append((1, n, ipv6(raw, bytes(15) + b"\1", 17, udp(1000 + n, 1194, b"x"))))
    frames.append((1, 99, ipv4(b"\x0a\x4d\x00\xff", b"\xc0\xa8\x01\x01", 17, udp(5, 6, b"y"))))
    path = tmp_path / "addresses.pcap"
    path.write_bytes(pcap(frames, linktype=101))
    assert shutil.which("tshark"), "tshark is needed (Debian package tshark; see .ci/run)"
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "ipv6.src", "-e", "ip.src"],
                         check=True, capture_output=True, text=True).stdout
    expected = [line.replace("\t", "") for line in out.splitlines()]
    assert [d.src for d in read_transport(path)] == expected
    assert expected[-1] == "10.77.0.255"


def test_transport_counts_what_it_skips():
    transport = Transport()
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    for n, (linktype, frame) in enumerate([(1, arp), (1, UDP4[0]), (1, b"\0" * 5), (147, b"x"),
                                           (101, ipv4(b"\1" * 4, b"\2" * 4, 1, b"\0" * 8)),
                                           (1, UDP4[3][:60])], start=1):
        transport.feed(n, float(n), linktype, frame)
    counts = transport.counts
    assert (counts.frames, counts.udp, counts.non_ip, counts.undecodable, counts.unsupported_linktype,
            counts.other_protocol, counts.truncated) == (6, 2, 1, 1, 1, 1, 1)
    assert counts.skipped == 4 and "non_ip=1" in repr(counts)
