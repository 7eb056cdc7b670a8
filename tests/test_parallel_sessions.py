"""--sessions by worker processes (dissect/parallel.py's _summarise, shardsessions.py): the
same summaries, in the same order, as one reader gives, on every bundled capture; one
reader instead when the shards cannot give that (a client that floated to a flow of
another shard, a capture longer than the reader's idle time)."""

import json
import subprocess
import sys

import pytest

from captures import ALL_CAPTURES, CAPTURES
from ovpndiag.capture.datagrams import shard_of
from ovpndiag.dissect import pipeline
from ovpndiag.dissect import reader as reader_module

NAMES = [c["file"] for c in ALL_CAPTURES]
# Captures that start mid-session where the server gave a gone client's peer-id to a later
# client (busy-mixed-cut): a flow that begins with data names a peer-id another flow has, so
# the workers cannot tell it from a float and leave the capture to one reader.
PEER_IDS_REUSED = {"busy-mixed-cut.pcap"}


def sessions(name, jobs):
    """(summaries, packets counted, whether workers made them) of one capture."""
    entry = next(c for c in ALL_CAPTURES if c["file"] == name)
    with pipeline.open(str(CAPTURES / name), ports=(entry["port"],), jobs=jobs, sessions=True) as run:
        capture = next(iter(run))
        packets = sum(capture.batches(pipeline.COUNT))
        return list(capture.summaries()), packets, capture.packed is not None, capture.tally


def crosses_shards(summary, jobs):
    server = summary["server_port"]
    ports = [summary["client_port"]] + [moved["client_port"] for moved in summary.get("floated_to", ())]
    return len({shard_of(port, server, jobs) for port in ports}) > 1


@pytest.mark.parametrize("name", NAMES)
def test_workers_give_one_readers_sessions(name):
    alone, packets, by_workers, tally = sessions(name, 1)
    assert not by_workers
    for jobs in (2, 3):
        shown = sessions(name, jobs)
        assert repr(shown[0]) == repr(alone)  # same sessions, order, key order and types
        assert shown[1] == packets and shown[3] == tally
        floated = any(crosses_shards(summary, jobs) for summary in alone)
        if name in PEER_IDS_REUSED:  # a mid-session flow's peer-id is another client's: one reader, to be safe
            assert not (floated and shown[2]), (name, jobs)
        else:
            assert shown[2] is not floated, (name, jobs)


def test_a_float_across_shards_is_left_to_one_reader():
    alone = sessions("udp-float.pcap", 1)[0]
    assert alone[0].get("floated_to")
    seen = {crosses_shards(alone[0], jobs) for jobs in (2, 3, 4, 5)}
    assert seen == {True, False}  # (both cases are checked by the test above for 2 and 3 or here)
    for jobs in (2, 3, 4, 5):
        shown, _packets, by_workers, _tally = sessions("udp-float.pcap", jobs)
        assert shown == alone and by_workers is not crosses_shards(alone[0], jobs)


def test_a_capture_longer_than_the_idle_time_is_left_to_one_reader(monkeypatch):
    # udp-try-keys.pcap: 19 sessions over ~2 s; forgotten after 0.1 s idle, looked for at every datagram
    monkeypatch.setattr(reader_module, "FLOW_IDLE", 0.1)
    monkeypatch.setattr(reader_module, "EXPIRY_CHECK", 1)
    alone = sessions("udp-try-keys.pcap", 1)[0]
    shown, _packets, by_workers, _tally = sessions("udp-try-keys.pcap", 2)
    assert not by_workers and repr(shown) == repr(alone)
    monkeypatch.setattr(reader_module, "FLOW_IDLE", 300.0)
    assert sessions("udp-try-keys.pcap", 2)[2]


def test_the_command_with_workers_prints_what_one_process_prints():
    path = str(CAPTURES / "udp-try-keys.pcap")
    for extra in ([], ["--json"]):
        one, two = (subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", "--sessions", path, "-j", jobs]
                                   + extra, capture_output=True, text=True, check=True).stdout for jobs in "12")
        assert one == two and one.count("client_session_id" if extra else "Session ") == 19
        if extra:
            assert [json.loads(line)["client_port"] for line in one.splitlines()]


def _stretched(tmp_path, gap, frames=9000):
    """udp-plain.pcap's frames repeated to ``frames``, ``gap`` capture seconds apart."""
    import struct

    data = (CAPTURES / "udp-plain.pcap").read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4
    records, offset = [], 24
    while offset + 16 <= len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        records.append(data[offset + 16:offset + 16 + length])
        offset += 16 + length
    out = bytearray(data[:24])
    for number in range(frames):
        frame = records[number % len(records)]
        micros = round(number * gap * 1e6)
        out += struct.pack("<IIII", 1700000000 + micros // 1000000, micros % 1000000, len(frame), len(frame))
        out += frame
    path = tmp_path / f"stretched-{gap}.pcap"
    path.write_bytes(bytes(out))
    return path


def test_a_capture_that_likely_spans_long_goes_to_one_reader_at_once(tmp_path, monkeypatch):
    from ovpndiag.dissect import parallel

    monkeypatch.setattr(parallel, "SPAN_SAMPLE", 4000)
    assert parallel.likely_too_long_for_sessions(_stretched(tmp_path, 1.0))  # 9,000 s
    assert not parallel.likely_too_long_for_sessions(_stretched(tmp_path, 0.01))  # 90 s
    assert not parallel.likely_too_long_for_sessions(CAPTURES / "udp-plain.pcap")  # (read whole: workers check)
    started = []
    monkeypatch.setattr(parallel, "Workers", lambda *a, **k: started.append(a) or pytest.fail("workers started"))
    with pipeline.open(str(_stretched(tmp_path, 1.0)), jobs=2, sessions=True) as run:
        capture = next(iter(run))
        assert sum(capture.batches(pipeline.COUNT)) > 0 and capture.packed is None and not started
