"""dissect -j/--jobs: flows shared out to worker processes, output merged back
into frame order - the same bytes one process prints, on every real capture, on
a capture of hundreds of flows, on damaged files and when stopped early."""

import importlib.util
import io
import os
import re
import sys

import pytest
from click.testing import CliRunner

from captures import ALL_CAPTURES, CAPTURES, key_path, no_openvpn_packets
from ovpndiag.capture.datagrams import Progress, Transport, read_transport, shard_of
from ovpndiag.cli import main
from ovpndiag.dissect import parallel

ROOT = CAPTURES.parent


def _benchmark_builder():
    spec = importlib.util.spec_from_file_location("dissect_speed", ROOT / "benchmarks" / "dissect_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


@pytest.fixture(scope="module")
def many_flows(tmp_path_factory):
    """The benchmark's capture, small: every real Ethernet capture repeated on new client ports."""
    path = tmp_path_factory.mktemp("parallel") / "many.pcap"
    _benchmark_builder()(6000, path)
    return path


def run(*args):
    result = CliRunner().invoke(main, ["dissect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def key_options(capture):
    flag = {"tls-auth": "--tls-auth", "tls-crypt": "--tls-crypt", "tls-crypt-v2": "--tls-crypt-v2"}
    if capture.get("key") and capture["wrapping"] in flag:
        return [flag[capture["wrapping"]], key_path(capture["key"])]
    return []


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["listing", "json"])
@pytest.mark.parametrize("capture", ALL_CAPTURES, ids=[c["file"] for c in ALL_CAPTURES])
def test_every_capture_reads_the_same_with_workers(capture, mode):
    args = [CAPTURES / capture["file"], *mode, *key_options(capture)]
    alone = run(*args, "--jobs", "1")
    assert alone.exit_code == 0 and (alone.output or no_openvpn_packets(capture))
    for jobs in ("2", "3"):
        shared = run(*args, "--jobs", jobs)
        assert (shared.exit_code, shared.output) == (alone.exit_code, alone.output)


def test_hundreds_of_flows_are_shared_out_and_merged_in_frame_order(many_flows):
    flows = {(d.transport, frozenset(((d.src, d.sport), (d.dst, d.dport))))
             for d in read_transport(str(many_flows))}
    shards = {shard_of(*(port for _address, port in endpoints), 2) for _transport, endpoints in flows}
    assert len(flows) > 100 and shards == {0, 1}  # both workers have work
    for mode in ([], ["--json"]):
        alone = run(many_flows, "-p", "12345", "-p", "443", *mode, "--jobs", "1")
        shared = run(many_flows, "-p", "12345", "-p", "443", *mode, "--jobs", "2")
        assert alone.exit_code == shared.exit_code == 0
        assert shared.output == alone.output and shared.output.count("\n") > 4000


def test_each_flow_goes_to_exactly_one_shard_and_together_they_are_the_whole(many_flows):
    whole = [d for d in read_transport(str(many_flows))]
    parts = []
    for index in range(3):
        for item in read_transport(str(many_flows), Transport(shard=(index, 3))):
            if item.__class__ is not Progress:
                assert shard_of(item.sport, item.dport, 3) == index
                parts.append(item)
    parts.sort(key=lambda d: d.frame)  # stable: a frame's datagrams keep their order
    # (stream numbers count each reassembler's own connections, so they are left out)
    assert [d._replace(stream=0) for d in parts] == [d._replace(stream=0) for d in whole]


def test_clients_on_even_ports_are_shared_out_evenly():
    # Linux's connect() prefers even source ports, and a test rig counts ports up: a split on
    # the ports' low bits alone gave one of two workers every such flow to one server port.
    for ports in (range(40000, 42000, 2), range(20000, 21000)):
        for shards in (2, 3, 4):
            counts = [0] * shards
            for port in ports:
                assert shard_of(port, 1194, shards) == shard_of(1194, port, shards)
                counts[shard_of(port, 1194, shards)] += 1
            assert max(counts) < 1.1 * len(ports) / shards, (ports, counts)


def test_progress_marks_come_in_frame_order_even_where_a_shard_has_nothing(many_flows):
    marks = [item.frame for item in read_transport(str(many_flows), Transport(shard=(7, 8)))
             if item.__class__ is Progress]
    assert marks and marks == sorted(marks) and all(frame % 4096 == 0 for frame in marks)


def test_a_damaged_file_prints_the_same_then_the_same_error(many_flows, tmp_path):
    cut = tmp_path / "cut.pcap"
    whole = many_flows.read_bytes()
    cut.write_bytes(whole[:len(whole) * 2 // 3 + 7])
    alone = run(cut, "-p", "12345", "--jobs", "1")
    shared = run(cut, "-p", "12345", "--jobs", "2")
    assert alone.exit_code == shared.exit_code == 1
    assert shared.output == alone.output and "record truncated" in shared.output


def test_count_stops_the_workers_early(many_flows):
    alone = run(many_flows, "-c", "25", "--jobs", "1")
    shared = run(many_flows, "-c", "25", "--jobs", "2")
    assert shared.output == alone.output and shared.output.count("\n") == 25


def test_workers_stopped_early_are_ended_and_reaped(many_flows):
    from ovpndiag.dissect.listing import ListingReader
    from ovpndiag.dissect.reader import Options

    workers = parallel.Workers(str(many_flows), lambda: ListingReader(Options(sessions=False)), 2,
                               parallel.first_frame_time(str(many_flows)))
    pids = list(workers.children)
    assert next(iter(workers.lines()))
    workers.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_merge_keeps_frame_order_and_holds_back_what_a_worker_may_still_precede():
    frames, texts = [[1, 4, 9], [2, 3, 9, 12]], [["a1", "a4", "a9"], ["b2", "b3", "b9", "b12"]]
    assert parallel._merge(frames, texts, 9) == ["a1", "b2", "b3", "a4", "a9", "b9"]
    assert frames == [[], [12]] and texts == [[], ["b12"]]
    assert parallel._merge(frames, texts, 11) == []


def test_small_files_stay_in_one_process_unless_asked(many_flows, monkeypatch):
    assert parallel.default_jobs(CAPTURES / "udp-plain.pcap") == 1
    assert parallel.default_jobs("/nonexistent.pcap") == 1
    monkeypatch.setattr(parallel, "MIN_SIZE", 1)
    assert parallel.default_jobs(many_flows) == min(len(os.sched_getaffinity(0)), parallel.MAX_JOBS)


def test_a_pipe_is_read_by_one_process_even_when_workers_are_asked_for(tmp_path):
    import subprocess
    import sys
    import threading

    capture = CAPTURES / "udp-tls-auth-sha1.pcap"
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(capture.read_bytes()))
    feeder.start()
    piped = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(fifo), "-j", "2"],
                           capture_output=True, text=True, timeout=60)
    feeder.join(timeout=10)
    assert piped.returncode == 0 and piped.stdout == run(capture, "-j", "1").output


def test_the_first_datagram_is_looked_for_only_near_the_start_and_times_count_from_the_first_frame(
        tmp_path, monkeypatch):
    from capture_files import pcap, real_records

    udp_frames = real_records("udp-plain.pcap")
    arp = bytes(6) + bytes(6) + b"\x08\x06" + bytes(28)  # frames with no datagram
    late = tmp_path / "late.pcap"
    late.write_bytes(pcap([(1, 0, arp)] * 9000 + udp_frames))
    assert parallel.first_frame_time(str(late)) == 1.0  # the first ARP frame's, as tshark counts
    monkeypatch.setattr(parallel, "FIRST_DATAGRAM_WITHIN", 5000)
    assert parallel.first_frame_time(str(late)) is None  # then one process reads the file
    assert run(late, "-j", "2").output == run(late, "-j", "1").output


def test_several_files_each_shared_out_keep_their_headers_and_file_keys():
    files = [CAPTURES / "udp-plain.pcap", CAPTURES / "tcp-tls-auth.pcap"]
    for mode in ([], ["--json"]):
        shared = run(*files, *mode, "-j", "2")
        assert shared.exit_code == 0 and shared.output == run(*files, *mode, "-j", "1").output
        assert all(str(path) in shared.output for path in files)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_progress_on_a_terminal_counts_frames_and_packets_then_the_tally_replaces_it(many_flows, monkeypatch, jobs):
    from ovpndiag.dissect import pipeline

    monkeypatch.setattr(pipeline, "PROGRESS_EVERY", 1000)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with pytest.raises(SystemExit) as leaving:
        main(["dissect", str(many_flows), "-p", "12345", "-p", "443", "-j", jobs], standalone_mode=False)
    assert leaving.value.code == 0
    progress = re.findall(r"\r([\d,]+) frames, ([\d,]+) OpenVPN packets ", terminal.getvalue())
    frames = [int(f.replace(",", "")) for f, _ in progress]
    packets = [int(p.replace(",", "")) for _, p in progress]
    assert len(progress) >= 2 and frames == sorted(frames) and frames[0] > 0 and packets == sorted(packets)
    tally = re.search(re.escape(f"\r\033[K{many_flows}: ") + r"([\d,]+) frames, ([\d,]+) OpenVPN packets;",
                      terminal.getvalue())  # over the progress line
    assert tally and int(tally[1].replace(",", "")) >= frames[-1] and int(tally[2].replace(",", "")) >= packets[-1]


@pytest.mark.parametrize("sessions", [False, True])
def test_a_worker_that_fails_is_named_with_its_error(sessions):
    """A worker's exception reaches the parent as one line naming it, and the worker exits
    (it never runs on into the parent's code after fork)."""
    from ovpndiag.dissect.parallel import Workers

    def failing_reader():
        raise ValueError("planted failure")

    workers = Workers(str(CAPTURES / "udp-plain.pcap"), failing_reader, 2, 0.0, sessions=sessions)
    try:
        with pytest.raises(RuntimeError, match=r"^dissection worker \d failed: ValueError: planted failure$"):
            list(workers.sessions() if sessions else workers.lines())
    finally:
        workers.close()
    assert workers.children == []
