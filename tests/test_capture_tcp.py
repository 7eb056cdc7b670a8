"""TCP stream reassembly: hand-made edge cases, and the real TCP captures' byte
streams re-cut into tiny segments, reordered, retransmitted, overlapping and
wrapping around the sequence space."""

import io
import random
from collections import defaultdict

import pytest

from capture_files import ethernet, ipv4, pcap, tcp
from captures import CAPTURES, MANIFEST
from ovpndiag.capture import Transport, read_transport
from ovpndiag.capture.tcpstream import FIN, RST, SYN, StreamReassembler

ACK, PSH = 0x10, 0x08
A = ("10.0.0.1", 40000, "10.0.0.2", 1194)
B = ("10.0.0.2", 1194, "10.0.0.1", 40000)


def feed(reassembler, key, seq, flags, payload=b"", cut=0, now=0.0):
    return [(k, payload, gap, end) for k, _stream, payload, gap, end in
            reassembler.segment(key, seq, flags, payload, cut, now)]


# --------------------------------------------------------------------------- edge cases

def test_in_order_bytes_come_out_once_and_acks_are_nothing():
    r = StreamReassembler()
    assert feed(r, A, 100, SYN) == []
    assert feed(r, A, 101, ACK) == []
    assert feed(r, A, 101, ACK, b"hello") == [(A, b"hello", 0, False)]
    assert feed(r, A, 106, ACK, b" world") == [(A, b" world", 0, False)]
    assert feed(r, A, 112, ACK) == []


def test_retransmissions_whole_or_partial_are_not_delivered_twice():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 1, ACK, b"abcdef") == [(A, b"abcdef", 0, False)]
    assert feed(r, A, 1, ACK, b"abcdef") == []                       # the same segment again
    assert feed(r, A, 3, ACK, b"cd") == []                           # inside what was delivered
    assert feed(r, A, 4, ACK, b"defgh") == [(A, b"gh", 0, False)]     # overlaps the end
    assert feed(r, A, 0, ACK, b"Xabcdefghij") == [(A, b"ij", 0, False)]  # starts before the stream
    assert r.retransmitted == 2


def test_out_of_order_segments_wait_for_the_gap_and_come_out_together():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 7, ACK, b"ghi") == []
    assert feed(r, A, 4, ACK, b"def") == []
    assert feed(r, A, 10, ACK, b"jk") == []
    assert r.pending_bytes == 8
    assert feed(r, A, 1, ACK, b"abc") == [(A, b"abcdefghijk", 0, False)]
    assert r.pending_bytes == 0 and r.out_of_order == 3


def test_a_stream_without_its_syn_starts_at_the_first_data_segment():
    r = StreamReassembler()
    assert feed(r, B, 5000, ACK) == []                                # nothing known yet
    assert feed(r, B, 5000, ACK | PSH, b"mid-stream") == [(B, b"mid-stream", 0, False)]
    assert feed(r, B, 4990, ACK, b"0123456789") == []                 # before our start: old bytes
    assert feed(r, B, 5010, ACK, b"!") == [(B, b"!", 0, False)]


def test_fin_ends_the_stream_and_frees_it_late_copies_start_nothing():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 1, ACK | FIN, b"bye") == [(A, b"bye", 0, True)]
    assert r.streams == 0
    assert feed(r, A, 1, ACK, b"bye") == [] and r.streams == 0       # retransmission after close
    assert feed(r, A, 4, ACK | FIN) == [] and r.streams == 0
    feed(r, B, 0, SYN | ACK)
    feed(r, B, 1, ACK, b"x")
    assert feed(r, B, 2, ACK | FIN) == [(B, b"", 0, True)]            # a bare FIN ends it too


def test_a_fin_before_the_last_bytes_waits_for_them():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 4, ACK | FIN, b"def") == []
    assert feed(r, A, 1, ACK, b"abc") == [(A, b"abcdef", 0, True)]
    assert r.streams == 0


def test_a_bare_fin_ahead_of_the_last_bytes_ends_the_stream_when_they_come():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 1, ACK, b"abc") == [(A, b"abc", 0, False)]
    assert feed(r, A, 7, ACK | FIN) == []                            # bytes 4-6 still to come
    assert feed(r, A, 4, ACK, b"def") == [(A, b"def", 0, True)]
    assert r.streams == 0


def test_rst_ends_both_directions():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    feed(r, B, 50, SYN | ACK)
    feed(r, A, 1, ACK, b"req")
    feed(r, B, 51, ACK, b"resp")
    feed(r, A, 10, ACK, b"held")                                       # ahead of a gap
    out = feed(r, B, 55, RST | ACK)
    assert sorted(out) == sorted([(A, b"held", 6, True), (B, b"", 0, True)])   # bytes 4-9 never seen
    assert r.streams == 0 and r.pending_bytes == 0


@pytest.mark.parametrize("isn", [0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF])
def test_sequence_numbers_wrap_around(isn):
    r = StreamReassembler()
    feed(r, A, isn, SYN)
    data = bytes(range(40))
    seq = (isn + 1) & 0xFFFFFFFF
    assert feed(r, A, (seq + 20) & 0xFFFFFFFF, ACK, data[20:]) == []  # across the wrap, early
    assert feed(r, A, seq, ACK, data[:25]) == [(A, data, 0, False)]
    assert feed(r, A, (seq + 10) & 0xFFFFFFFF, ACK, data[10:30]) == []  # retransmission across it
    assert feed(r, A, (seq + 40) & 0xFFFFFFFF, ACK | FIN) == [(A, b"", 0, True)]


def test_a_new_connection_on_the_same_ports_is_a_new_stream():
    r = StreamReassembler()
    first = r.segment(A, 100, SYN, b"", 0, 0.0) + r.segment(A, 101, ACK, b"one", 0, 0.0)
    second = r.segment(A, 9000, SYN, b"", 0, 1.0) + r.segment(A, 9001, ACK, b"two", 0, 1.0)
    assert first[-1][1] != second[-1][1]
    assert [(d[2], d[4]) for d in second] == [(b"", True), (b"two", False)]  # the old one ended


def test_data_on_a_syn_counts():
    r = StreamReassembler()
    assert feed(r, A, 77, SYN, b"fast open") == [(A, b"fast open", 0, False)]
    assert feed(r, A, 77, SYN, b"fast open") == []                   # the SYN retransmitted


def test_lost_bytes_are_a_gap_after_too_much_waiting():
    r = StreamReassembler(max_pending=10)
    feed(r, A, 0, SYN)
    feed(r, A, 1, ACK, b"ab")
    assert feed(r, A, 8, ACK, b"0123") == []
    assert feed(r, A, 12, ACK, b"456789") == []
    # Over 10 bytes held: give up on the 5 missing bytes (3..7).
    assert feed(r, A, 18, ACK, b"X") == [(A, b"0123456789X", 5, False)]
    assert r.gaps == 1
    assert feed(r, A, 3, ACK, b"cdefg") == []                        # too late now


def test_the_total_held_by_all_streams_is_bounded():
    r = StreamReassembler(max_pending=1 << 20, max_pending_total=100)
    keys = [("10.0.0.1", port, "10.0.0.2", 1194) for port in range(1, 11)]
    for key in keys:
        r.segment(key, 0, SYN, b"", 0, 0.0)
        r.segment(key, 50, ACK, b"x" * 30, 0, 0.0)
    assert r.pending_bytes <= 100 and r.gaps >= 7


def test_a_cut_segment_makes_a_gap_before_the_next_bytes():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    assert feed(r, A, 1, ACK, b"abc", cut=7) == [(A, b"abc", 0, False)]
    assert feed(r, A, 11, ACK, b"next") == [(A, b"next", 7, False)]


def test_idle_and_surplus_streams_are_evicted():
    r = StreamReassembler(idle_timeout=60, max_streams=3)
    for port in range(4):
        r.segment(("h", port, "s", 1), 0, SYN, b"", 0, float(port))
    assert r.streams == 3 and r.evicted == 1
    out = r.segment(("h", 9, "s", 1), 5, ACK, b"late", 0, 1000.0)
    assert r.streams == 1 and r.evicted == 4
    assert sum(1 for d in out if d[4]) == 3                          # their ends, then the new bytes
    assert out[-1][2] == b"late"


def test_a_stream_goes_idle_while_another_keeps_sending_in_order():
    # The in-order common case also ends the streams that went idle meanwhile (it keeps a
    # bound on the oldest stream's last segment: each call must still see the real one).
    r = StreamReassembler(idle_timeout=60)
    assert feed(r, A, 1, ACK, b"a", now=0.0) == [(A, b"a", 0, False)]
    assert feed(r, B, 1, ACK, b"b", now=0.0) == [(B, b"b", 0, False)]
    assert feed(r, A, 2, ACK, b"a", now=30.0) == [(A, b"a", 0, False)]
    assert feed(r, A, 3, ACK, b"a", now=60.0) == [(A, b"a", 0, False)]   # B idle for 60 s: not yet
    assert feed(r, B, 2, ACK, b"b", now=60.0) == [(B, b"b", 0, False)]   # B again: A (60) is oldest
    assert feed(r, B, 3, ACK, b"b", now=119.0) == [(B, b"b", 0, False)]
    assert r.streams == 2 and r.evicted == 0
    assert feed(r, B, 4, ACK, b"b", now=121.0) == [(B, b"b", 0, False), (A, b"", 0, True)]
    assert r.streams == 1 and r.evicted == 1


def test_closed_streams_are_remembered_for_a_while_and_in_bounded_number():
    r = StreamReassembler(max_closed=100, closed_timeout=120)
    for port in range(1000):                                          # short connections, 1 s apart
        key = ("h", port, "s", 1)
        r.segment(key, 0, SYN, b"", 0, float(port))
        r.segment(key, 1, ACK | FIN, b"data", 0, float(port))
    assert r.streams == 0 and len(r._closed) == 100
    late = ("h", 999, "s", 1)
    assert r.segment(late, 1, ACK, b"data", 0, 1000.0) == []          # a late copy: nothing new
    r.segment(("h", 5000, "s", 1), 0, SYN | FIN, b"", 0, 2000.0)      # much later
    assert len(r._closed) == 1


def test_flush_ends_every_stream_after_its_held_bytes():
    r = StreamReassembler()
    feed(r, A, 0, SYN)
    feed(r, A, 1, ACK, b"a")
    feed(r, A, 5, ACK, b"e")
    feed(r, B, 0, ACK, b"b")
    out = [(k, p, g, e) for k, _s, p, g, e in r.flush()]
    assert sorted(out) == sorted([(A, b"e", 3, True), (B, b"", 0, True)])
    assert r.streams == 0


# --------------------------------------------------------------------------- the real streams, re-cut

def real_streams(name):
    """{(src, sport, dst, dport): (isn, bytes, first frame)} of a real TCP capture, read
    with Scapy (independently of ovpndiag.capture): each direction's SYN and its
    payload bytes by sequence number."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import rdpcap

    syn, data, first = {}, defaultdict(dict), {}
    for n, packet in enumerate(rdpcap(str(CAPTURES / name)), start=1):
        if TCP not in packet:
            continue
        key = (packet[IP].src, packet[TCP].sport, packet[IP].dst, packet[TCP].dport)
        first.setdefault(key, n)
        if packet[TCP].flags.S:
            syn[key] = packet[TCP].seq
        payload = bytes(packet[TCP].payload)
        if payload:
            data[key][packet[TCP].seq] = payload
    streams = {}
    for key, isn in syn.items():
        out, position = b"", isn + 1
        while position in data[key]:
            out += data[key][position]
            position += len(data[key][position])
        streams[key] = (isn, out, first[key])
    return streams


TCP_CAPTURES = [c["file"] for c in MANIFEST if c["transport"] == "tcp" and c["family"] == 4]


def resegment(streams, rng, isn_shift, keep_syn=True):
    """Frames that carry the streams again: random small segments, some held back and
    sent later, some sent twice, some re-sent overlapping; plus SYNs and FINs.
    Returns (frames, {key: [(frame number, new bytes)] as the stream becomes readable})."""
    events = []                            # (order, key, seq offset, flags, payload)
    for key, (_isn, data, first) in streams.items():
        t = first * 1000.0
        if keep_syn:
            events.append((t, key, -1, SYN, b""))
        offset = 0
        while offset < len(data):
            size = rng.choice([1, 2, 3, 7, 50, 300, 1500])
            piece = data[offset:offset + size]
            delay = rng.choice([0, 0, 0, 5, 40]) if offset or keep_syn else 0
            events.append((t + offset + delay, key, offset, ACK, piece))
            if rng.random() < 0.15:            # a retransmission, whole
                events.append((t + offset + 60, key, offset, ACK, piece))
            if rng.random() < 0.1 and offset:  # a re-send overlapping earlier bytes
                back = rng.randint(1, offset)
                events.append((t + offset + 80, key, offset - back, ACK, data[offset - back:offset + size]))
            offset += len(piece)
        events.append((t + len(data) + 100, key, len(data), ACK | FIN, b""))
    events.sort(key=lambda e: e[0])
    frames, covered, expected = [], {}, defaultdict(list)
    for number, (_t, key, offset, flags, payload) in enumerate(events, start=1):
        seq = (streams[key][0] + isn_shift + 1 + offset) & 0xFFFFFFFF
        ip = lambda a: bytes(int(x) for x in a.split("."))
        frames.append(ethernet(ipv4(ip(key[0]), ip(key[2]), 6, tcp(key[1], key[3], seq, flags, payload))))
        # What becomes readable: the contiguous prefix of the stream seen so far.
        seen = covered.setdefault(key, bytearray(len(streams[key][1])))
        if offset >= 0:
            seen[offset:offset + len(payload)] = b"\1" * len(payload)
        readable = seen.find(0) if 0 in seen else len(seen)
        delivered = sum(len(p) for _n, p in expected[key])
        if readable > delivered:
            expected[key].append((number, streams[key][1][delivered:readable]))
    return frames, expected


@pytest.mark.parametrize("name", TCP_CAPTURES)
@pytest.mark.parametrize("seed", range(4))
def test_real_streams_recut_reordered_and_retransmitted(name, seed):
    rng = random.Random(seed)
    streams = real_streams(name)
    assert streams
    # Shift every sequence number so that streams cross the 2^32 wrap (seed 1, 3).
    shift = (2**32 - 3000 - min(isn for isn, _d, _f in streams.values())) if seed % 2 else 0
    frames, expected = resegment(streams, rng, shift)
    transport = Transport()
    got = defaultdict(list)
    ends = defaultdict(int)
    for d in read_transport(io.BytesIO(pcap([(1, n, f) for n, f in enumerate(frames)])), transport):
        key = (d.src, d.sport, d.dst, d.dport)
        if d.payload:
            got[key].append((d.frame, d.payload))
        assert d.gap == 0
        ends[key] += d.end
    assert dict(got) == {k: v for k, v in expected.items() if v}
    assert all(b"".join(p for _n, p in got[k]) == streams[k][1] for k in got)
    assert set(ends) == set(streams) and set(ends.values()) == {1}
    assert transport.tcp.streams == 0 and transport.tcp.pending_bytes == 0


@pytest.mark.parametrize("name", TCP_CAPTURES[:3])
def test_real_streams_without_their_syns(name):
    rng = random.Random(9)
    streams = real_streams(name)
    frames, expected = resegment(streams, rng, 0, keep_syn=False)
    got = defaultdict(bytes)
    transport = Transport()
    for number, frame in enumerate(frames, start=1):              # frame by frame, as when sniffing
        for d in transport.feed(number, float(number), 1, frame):
            got[(d.src, d.sport, d.dst, d.dport)] += d.payload
    assert dict(got) == {k: data for k, (_isn, data, _f) in streams.items()}
