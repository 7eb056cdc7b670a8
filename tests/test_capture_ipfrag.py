"""IP fragment reassembly: real datagrams cut into fragments every which way.

The recorded fragments (udp-frag, udp6-frag) are checked end to end against the
oracle and tshark in test_capture_read; here the real control packets of
udp-plain and udp6-tls-auth are fragmented by hand, shuffled, duplicated and
overlapped, and the limits are pushed.
"""

import io
import random
import struct

import pytest

from capture_files import ethernet, ethernet_payload, ipv4, ipv6, pcap, real_records
from ovpndiag.capture import Transport, read_transport
from ovpndiag.capture.ipfrag import Defragmenter

V4 = [frame for _s, _u, frame in real_records("udp-plain.pcap")]
V6 = [frame for _s, _u, frame in real_records("udp6-tls-auth.pcap")]


def biggest(frames):
    return max(frames, key=len)


def fragments_v4(frame, size, ident=4321):
    """The frame's IPv4 packet cut into fragments of ``size`` payload bytes (a multiple of 8)."""
    _, packet = ethernet_payload(frame)
    header_len = (packet[0] & 15) * 4
    src, dst, protocol, payload = packet[12:16], packet[16:20], packet[9], packet[header_len:]
    pieces = []
    for offset in range(0, len(payload), size):
        more = 0x2000 if offset + size < len(payload) else 0
        pieces.append(ethernet(ipv4(src, dst, protocol, payload[offset:offset + size], ident=ident,
                                    flags_offset=more | offset // 8)))
    return pieces


def fragments_v6(frame, size, ident=0x1234567, prefix=b""):
    """The frame's IPv6 packet cut into fragments (fragment header after the fixed header);
    ``prefix`` goes in front of the transport header in the fragmentable part."""
    _, packet = ethernet_payload(frame)
    src, dst, next_header = packet[8:24], packet[24:40], packet[6]
    fragmentable = prefix + packet[40:]
    if prefix:
        next_header = 60                # a destination options header carries the prefix
    pieces = []
    for offset in range(0, len(fragmentable), size):
        more = 1 if offset + size < len(fragmentable) else 0
        header = struct.pack("!BBHI", next_header, 0, offset | more, ident)
        pieces.append(ethernet(ipv6(src, dst, 44, header + fragmentable[offset:offset + size])))
    return pieces


def udp_payload(frame):
    _, packet = ethernet_payload(frame)
    if packet[0] >> 4 == 4:
        return packet[(packet[0] & 15) * 4 + 8:]
    return packet[48:]


def read(frames, transport=None, times=None):
    records = [(100 + (times[n] if times else 0), n, frame) for n, frame in enumerate(frames)]
    return list(read_transport(io.BytesIO(pcap(records)), transport))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("size", [8, 64, 552, 1232])
def test_real_datagrams_in_shuffled_duplicated_fragments(family, size):
    rng = random.Random(size * family)
    frames = V4 if family == 4 else V6
    originals = sorted(frames, key=len)[-3:]                 # the certificate-sized control packets
    stream = []                                              # (datagram, piece number, frame)
    for n, frame in enumerate(originals):
        cut = fragments_v4(frame, size, ident=100 + n) if family == 4 else \
            fragments_v6(frame, size, ident=100 + n)
        pieces = [(n, k, f) for k, f in enumerate(cut)]
        stream += pieces + rng.sample(pieces, min(3, len(pieces)))   # with duplicates
    rng.shuffle(stream)
    # A datagram comes out in the frame where its last missing piece arrives. Like a
    # receiving kernel, the reader then forgets it: should duplicates of all its pieces
    # follow, it comes out again (a duplicated datagram), otherwise they just wait.
    expected, seen = [], {}
    for number, (n, k, _frame) in enumerate(stream, start=1):
        seen.setdefault(n, set()).add(k)
        if len(seen[n]) == len({kk for nn, kk, _f in stream if nn == n}):
            expected.append((number, udp_payload(originals[n])))
            seen[n] = set()
    transport = Transport()
    got = read([frame for _n, _k, frame in stream], transport)
    assert [(d.frame, d.payload) for d in got] == expected
    assert sorted({d.payload for d in got}) == sorted(udp_payload(f) for f in originals)
    fragmented = {n for n, k, _f in stream if k > 0}          # datagrams cut in more than one piece
    assert transport.counts.reassembled == sum(payload in {udp_payload(originals[n]) for n in fragmented}
                                               for _number, payload in expected)
    assert transport.defrag.pending == len([n for n in seen if seen[n]])


def test_a_datagram_comes_out_in_the_frame_that_completes_it():
    cut = fragments_v4(biggest(V4), 552)
    assert len(cut) == 3
    order = [cut[2], cut[0], cut[0], cut[1]]                 # last first, a duplicate, then the middle
    got = read(order)
    assert [(d.frame, d.payload) for d in got] == [(4, udp_payload(biggest(V4)))]


def test_consistent_overlaps_are_fine_and_conflicting_ones_drop_the_datagram():
    _, packet = ethernet_payload(biggest(V4))
    src, dst, payload = packet[12:16], packet[16:20], packet[20:]

    def piece(offset, end, more, data=None):
        data = payload[offset:end] if data is None else data
        return ethernet(ipv4(src, dst, 17, data, ident=9, flags_offset=(0x2000 if more else 0) | offset // 8))

    n = len(payload)
    overlapping = [piece(0, 600, True), piece(400, 1000, True), piece(8, 64, True), piece(800, n, False)]
    transport = Transport()
    assert [d.payload for d in read(overlapping, transport)] == [payload[8:]]
    changed = bytes(b ^ 0xFF for b in payload[400:1000])
    conflicting = [piece(0, 600, True), piece(400, 1000, True, changed), piece(800, n, False)]
    transport = Transport()
    assert read(conflicting, transport) == []
    assert transport.counts.fragments_dropped == 1 and transport.defrag.pending == 0


def test_missing_fragments_never_yield_and_expire():
    cut = fragments_v4(biggest(V4), 552)
    transport = Transport()
    assert read(cut[:2], transport) == []                    # no last fragment
    assert read([cut[0], cut[2]], Transport()) == []         # a hole in the middle
    assert transport.defrag.pending == 1
    # After the timeout an old piece does not complete a new datagram with the same id.
    transport = Transport()
    assert read([cut[0], cut[1], cut[2]], transport, times=[0, 0, 61]) == []
    assert transport.counts.fragments_dropped == 1
    assert read([cut[0], cut[1], cut[2]], Transport(), times=[0, 0, 59]) != []


def test_ipv6_extension_headers_inside_the_fragmentable_part():
    prefix = bytes([17, 0, 1, 4, 0, 0, 0, 0])                # destination options, then UDP
    frame = biggest(V6)
    got = read(fragments_v6(frame, 504, prefix=prefix))
    assert [d.payload for d in got] == [udp_payload(frame)]


def test_limits_bound_memory():
    defrag = Defragmenter(max_datagrams=10, max_bytes=4000, timeout=30)
    for ident in range(50):
        assert defrag.add((b"a", ident, 17), 0, True, 17, b"x" * 96, now=float(ident)) is None
    assert defrag.pending <= 10 and defrag.pending_bytes <= 4000 and defrag.dropped == 40
    # The oldest went first: the newest can still be completed.
    assert defrag.add((b"a", 49, 17), 96, False, 17, b"y" * 8, now=49.0) == (17, b"x" * 96 + b"y" * 8)
    # Too many pieces, or a datagram past 65535 bytes, is given up.
    defrag = Defragmenter(max_pieces=4)
    for offset in range(0, 40, 8):                              # the fifth piece is one too many
        defrag.add((b"b", 1, 17), offset, True, 17, b"z" * 8, now=0.0)
    assert defrag.pending == 0 and defrag.dropped == 1
    assert defrag.add((b"c", 1, 17), 65528, False, 17, b"z" * 16, now=0.0) is None
    assert defrag.dropped == 2


def test_two_different_last_fragments_drop_the_datagram():
    defrag = Defragmenter()
    defrag.add((b"d", 1, 17), 0, True, 17, b"a" * 16, now=0.0)
    defrag.add((b"d", 1, 17), 16, False, 17, b"b" * 8, now=0.0)  # completes: returns
    assert defrag.reassembled == 1
    defrag.add((b"e", 1, 17), 16, False, 17, b"b" * 8, now=0.0)
    defrag.add((b"e", 1, 17), 32, False, 17, b"c" * 8, now=0.0)
    assert defrag.dropped == 1 and defrag.pending == 0


def test_many_datagrams_stay_bounded():
    """Twenty thousand first fragments of datagrams whose other pieces never come."""
    transport = Transport(defrag=Defragmenter(max_datagrams=256, max_bytes=1 << 20))
    base = fragments_v4(biggest(V4), 552)[0]
    for n in range(20000):
        frame = bytearray(base)
        frame[18:20] = struct.pack("!H", n & 0xFFFF)             # a new IP id each time
        transport.feed(n + 1, float(n), 1, bytes(frame))
    assert transport.defrag.pending <= 256 and transport.defrag.pending_bytes <= 1 << 20
    assert transport.counts.fragments == 20000
