"""ovpndiag.capture on every real capture: the same transport payloads as the
independent oracle in tests/captures.py, and the same frames, times, lengths,
addresses and ports as tshark."""

import shutil
import subprocess
from collections import Counter

import pytest

from captures import CAPTURES, MANIFEST, transport_payloads
from ovpndiag.capture import Transport, read_frames, read_transport

NAMES = [capture["file"] for capture in MANIFEST]
BY_NAME = {capture["file"]: capture for capture in MANIFEST}


def oracle_payloads(capture):
    """(frame, sender, transport, payload) as the oracle sees them; TCP cut down to
    the in-order new bytes of each direction (loopback captures have no losses)."""
    expected, next_seq = [], {}
    for frame, sender, transport, seq, flags, payload in transport_payloads(capture):
        if transport == "udp":
            expected.append((frame, sender, "udp", payload))
        elif flags & 0x02:
            next_seq[sender] = (seq + 1) & 0xFFFFFFFF
        elif payload and seq == next_seq.get(sender):
            expected.append((frame, sender, "tcp", payload))
            next_seq[sender] = (seq + len(payload)) & 0xFFFFFFFF
    return expected


def reader_payloads(capture, transport=None):
    port = capture["port"]
    return [(d.frame, "client" if d.dport == port else "server", d.transport, d.payload)
            for d in read_transport(CAPTURES / capture["file"], transport)
            if d.payload and port in (d.sport, d.dport)]


@pytest.mark.parametrize("name", NAMES)
def test_the_reader_yields_what_the_oracle_sees(name):
    capture = BY_NAME[name]
    transport = Transport()
    assert reader_payloads(capture, transport) == oracle_payloads(capture)
    counts = transport.counts
    assert counts.undecodable == counts.unsupported_linktype == counts.truncated == 0
    assert counts.tcp_gaps == 0 and counts.fragments_dropped == 0
    assert counts.frames == sum(1 for _ in read_frames(CAPTURES / name))


@pytest.mark.parametrize("name", NAMES)
def test_tcp_streams_end_and_are_numbered_per_connection(name):
    capture = BY_NAME[name]
    datagrams = list(read_transport(CAPTURES / name))
    if capture["transport"] == "udp":
        assert all(d.transport == "udp" and not d.stream and not d.end for d in datagrams)
        return
    # Every stream ends exactly once (FIN, RST or the end of the capture), and nothing
    # of a stream comes after its end.
    ends = Counter(d.stream for d in datagrams if d.end)
    streams = {d.stream for d in datagrams}
    assert set(ends) == streams and set(ends.values()) == {1}
    ended = set()
    for d in datagrams:
        assert d.stream not in ended
        if d.end:
            ended.add(d.stream)
    # Each connection is two streams with swapped endpoints.
    directions = {d.stream: (d.src, d.sport, d.dst, d.dport) for d in datagrams}
    assert len(set(directions.values())) == len(directions) or capture["outcome"] == "failed"
    for key in directions.values():
        assert (key[2], key[3], key[0], key[1]) in directions.values()


# --------------------------------------------------------------------------- tshark

TSHARK_FIELDS = ["frame.number", "frame.time_epoch", "frame.len", "frame.cap_len",
                 "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport",
                 "icmp.type", "icmpv6.type", "frame.protocols", "ip.flags.mf", "ip.frag_offset"]


@pytest.fixture(scope="module")
def tshark_frames(tmp_path_factory):
    """tshark's view of every capture: {file: [fields per frame]}. One tshark run over
    all captures merged end to end (mergecap -a keeps each file's frames, times and
    link types), because starting tshark once per file costs half a second each."""
    for tool in ("tshark", "mergecap"):
        assert shutil.which(tool), f"{tool} is needed (Debian package tshark; see .ci/run)"
    merged = tmp_path_factory.mktemp("tshark") / "all.pcapng"
    subprocess.run(["mergecap", "-a", "-F", "pcapng", "-w", str(merged),
                    *[str(CAPTURES / name) for name in NAMES]], check=True, capture_output=True)
    fields = [arg for field in TSHARK_FIELDS for arg in ("-e", field)]
    out = subprocess.run(["tshark", "-n", "-r", str(merged), "-T", "fields", "-E", "separator=/t",
                          "-E", "occurrence=f", *fields], check=True, capture_output=True,
                         text=True).stdout
    rows = [dict(zip(TSHARK_FIELDS, line.split("\t"))) for line in out.splitlines()]
    per_file, start = {}, 0
    from scapy.utils import RawPcapReader  # frame counts from a third reader

    for name in NAMES:
        count = sum(1 for _ in RawPcapReader(str(CAPTURES / name)))
        per_file[name] = rows[start:start + count]
        for row in per_file[name]:  # frame numbers of the file itself, not of the merge
            row["frame.number"] = str(int(row["frame.number"]) - start)
        start += count
    assert start == len(rows)
    return per_file


@pytest.mark.parametrize("name", NAMES)
def test_frames_and_times_match_tshark(name, tshark_frames):
    rows = tshark_frames[name]
    frames = list(read_frames(CAPTURES / name))
    assert [f.number for f in frames] == list(range(1, len(rows) + 1))
    for frame, row in zip(frames, rows):
        seconds, _, fraction = row["frame.time_epoch"].partition(".")
        exact = int(seconds) * 10**9 + int(fraction.ljust(9, "0"))
        # Floats hold epoch times to a few hundred nanoseconds: microsecond captures
        # round-trip exactly, nanosecond ones to well under a microsecond.
        assert abs(frame.time * 1e9 - exact) < 500, (frame.number, frame.time, row["frame.time_epoch"])
        if exact % 1000 == 0:
            assert round(frame.time * 1e6) * 1000 == exact
        assert (frame.orig_len, len(frame.data)) == (int(row["frame.len"]), int(row["frame.cap_len"]))


@pytest.mark.parametrize("name", NAMES)
def test_udp_addresses_and_ports_match_tshark(name, tshark_frames):
    """Every frame in which tshark shows a UDP datagram (after its IP reassembly) is
    one in which the reader yields it, with the same addresses and ports."""
    expected = []
    for row in tshark_frames[name]:
        if row["udp.srcport"] and not row["icmp.type"] and not row["icmpv6.type"]:
            src = row["ip.src"] or row["ipv6.src"]
            dst = row["ip.dst"] or row["ipv6.dst"]
            expected.append((int(row["frame.number"]), src, dst, int(row["udp.srcport"]),
                             int(row["udp.dstport"])))
    got = [(d.frame, d.src, d.dst, d.sport, d.dport)
           for d in read_transport(CAPTURES / name) if d.transport == "udp"]
    assert got == expected


@pytest.mark.parametrize("name", NAMES)
def test_skipped_frames_and_fragments_are_counted_as_tshark_sees_them(name, tshark_frames):
    """ARP is not IP; ICMP(v6) - also behind IPv6 hop-by-hop options (MLD) - is IP but
    neither UDP nor TCP; IP fragments are counted, and each datagram is reassembled in
    the frame where tshark reassembles it."""
    transport = Transport()
    datagrams = list(read_transport(CAPTURES / name, transport))
    counts = transport.counts
    rows = tshark_frames[name]
    protocols = [row["frame.protocols"].split(":") for row in rows]
    fragment = [row["ip.flags.mf"] == "1" or row["ip.frag_offset"] not in ("", "0")
                or "ipv6.fraghdr" in p for row, p in zip(rows, protocols)]
    assert counts.non_ip == sum("ip" not in p and "ipv6" not in p for p in protocols)
    assert counts.other_protocol == sum("icmp" in p or "icmpv6" in p for p in protocols)
    assert counts.fragments == sum(fragment)
    reassembled = [n for n, (p, f) in enumerate(zip(protocols, fragment), start=1) if f and "udp" in p]
    assert counts.reassembled == len(reassembled)
    assert set(reassembled) <= {d.frame for d in datagrams if d.transport == "udp"}
    assert bool(reassembled) == BY_NAME[name]["fragmented"]
    assert counts.frames == len(rows) and counts.skipped == counts.non_ip + counts.other_protocol


def general_path(source):
    """What the reader gives when every frame takes the general path: pcapfile's frames
    fed one at a time to a Transport (as when sniffing), then flushed."""
    from ovpndiag.capture import CaptureError

    transport, out, last = Transport(), [], (0, 0.0)
    try:
        for frame in read_frames(source):
            out += transport.feed(frame.number, frame.time, frame.linktype, frame.data)
            last = (frame.number, frame.time)
    except CaptureError as e:
        return out + transport.flush(*last), str(e), transport.counts
    return out + transport.flush(*last), None, transport.counts


def fast_path(source):
    from ovpndiag.capture import CaptureError

    transport, out = Transport(), []
    try:
        for d in read_transport(source, transport):
            out.append(d)
    except CaptureError as e:
        return out, str(e), transport.counts
    return out, None, transport.counts


@pytest.mark.parametrize("name", NAMES)
def test_the_fused_loop_gives_what_the_general_path_gives(name):
    """read_transport decodes most frames of a classic pcap in one fused loop; frame by
    frame through Transport.feed (the sniffing path) must give the very same."""
    fast, error, counts = fast_path(CAPTURES / name)
    general, general_error, general_counts = general_path(CAPTURES / name)
    assert fast == general and error is general_error is None
    assert counts.as_dict() == general_counts.as_dict()
