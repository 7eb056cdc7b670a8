#!/usr/bin/env python3
"""ovpndiag dissect beside tshark on a capture of 500,000+ packets, every output.

Two workloads (--workload):

  sessions  (default) 24,000 real short sessions of every wrapping (none, tls-auth SHA1/256/512,
            tls-crypt, tls-crypt-v2; UDP and TCP) in four minutes, 546,000 frames: made by
            sessions_capture.py from the real sessions in data/short-sessions.pcap.gz and
            cached in ~/.cache/ovpndiag-bench (built once, ~10 s).
  repeat    the bundled real Ethernet captures repeated, each repetition on its own client
            ports and shifted in time (a new flow every 20 packets or so), built in a
            temporary folder.

Each output is timed beside what it is judged against, with output to /dev/null:

  listing   ovpndiag dissect FILE -p PORT...        tshark -r FILE -d udp.port==...,openvpn ...
            (-j 1 too: the same in one process)
  sessions  ovpndiag dissect ... --sessions         ovpndiag's listing
  json      ovpndiag dissect ... --json             tshark -r FILE ... -T ek
  tree      ovpndiag dissect ... -V                 tshark -r FILE ... -V       (--outputs ...,tree: slow)
  analyze   ovpndiag analyze ...                    ovpndiag's listing

Every command runs --repeat times, in interleaved rounds (a slow spell of the shared
machine hits every command alike); medians and bests are reported, and each pair's ratio
as the median of the per-round ratios. Then one more run each for peak memory (for
ovpndiag the sum over its worker processes; see tree_memory): sampling /proc would slow
a timed run. With --session-memory the sessions workload also measures what a finished
session costs: --sessions' peak memory on 24,000 and on 144,000 sessions, the difference
divided by the 120,000 more. Issue 10 asks: listing at least as fast as tshark -r (ratio
<= 1), --sessions at most 1.5x the listing, a finished session a few hundred bytes,
--json at least 5x faster than tshark -T ek (ratio <= 0.2) with flat memory, -V at most
2x tshark -V. Issue 12 asks: analyze at most 1.5x the listing, with flat memory (a
finished session a few hundred bytes).

    python3 benchmarks/dissect_speed.py [--workload sessions|repeat] [--repeat 3]
        [--outputs listing,sessions,json,tree,analyze] [--session-memory] [--keep FILE]
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"


SERVER_PORTS = {1194, 12345, 443}  # every other port is rewritten to the repetition's client port


def ethernet_captures():
    """The whole sessions recorded on loopback (the mid-session, float and flood captures
    recorded between namespaces are left out, so the workload stays what it was)."""
    manifest = json.loads((CAPTURES / "manifest.json").read_text())
    return [CAPTURES / entry["file"] for entry in manifest
            if entry.get("linktype", 1) == 1 and entry.get("format", "pcap") == "pcap"
            and entry.get("captured", "").startswith("tcpdump -i lo") and entry.get("port") in SERVER_PORTS
            and not entry.get("derived_from") and not entry.get("vlan") and not entry.get("fragmented")]


def records(path):
    """(seconds, microseconds, frame) of a classic little-endian microsecond pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4, path
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, caplen, _ = struct.unpack_from("<IIII", data, offset)
        yield seconds, micros, data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen


def transport_offset(frame):
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        return 14 + (frame[14] & 0x0F) * 4, frame[23]
    if ethertype == 0x86DD:
        return 54, frame[20]
    return None, None


def build(target, out_path):
    """Repeat the captures until ``target`` packets; returns the count written."""
    server_ports = SERVER_PORTS
    sources = []
    for path in ethernet_captures():
        sources.append([(s + u / 1e6, frame) for s, u, frame in records(path)])
    written = 0
    with open(out_path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        repetition = 0
        while written < target:
            for number, frames in enumerate(sources):
                base = frames[0][0]
                client_port = 20000 + (repetition * len(sources) + number) % 40000
                for stamp, frame in frames:
                    frame = bytearray(frame)
                    offset, protocol = transport_offset(frame)
                    if offset is not None and protocol in (6, 17):
                        sport, dport = struct.unpack_from("!HH", frame, offset)
                        if sport not in server_ports:
                            sport = client_port
                        if dport not in server_ports:
                            dport = client_port
                        struct.pack_into("!HH", frame, offset, sport, dport)
                        if protocol == 17:
                            struct.pack_into("!H", frame, offset + 6, 0)  # checksum: not recomputed
                    when = 1.7e9 + repetition * 20 + (stamp - base)
                    out.write(struct.pack("<IIII", int(when), int((when % 1) * 1e6), len(frame), len(frame)))
                    out.write(frame)
                    written += 1
            repetition += 1
    return written


def tree_memory(root):
    """Memory (MB) of a process and its children (ovpndiag's workers), from /proc: the
    sum of their proportional set sizes, so pages a forked worker shares with its
    parent count once, not once per process as a sum of RSS would."""
    total = 0
    for pid in [root] + children(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


def timed(argv):
    """(seconds, exit status) of one run, nothing else running beside it."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        code = subprocess.call(argv, stdout=sink, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, code


def peak_memory(argv):
    """Peak memory of the process tree in MB: sampled every 20 ms (workers' memory adds
    up), and wait4's peak RSS of the main process in case a peak falls between samples.
    A run of its own: reading /proc costs CPU that would skew a timed run."""
    peak = 0.0
    with open(os.devnull, "wb") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.DEVNULL)
        while True:
            pid, _status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_memory(child.pid))
            time.sleep(0.02)
    return max(peak, usage.ru_maxrss / 1024)


class Workload:
    """A capture, the ports ovpndiag is told (-p) and tshark's Decode As for them."""

    def __init__(self, capture, ports):
        self.capture = capture
        self.ours = [sys.executable, "-m", "ovpndiag", "dissect", str(capture)]
        self.theirs = ["tshark", "-r", str(capture)]
        for port in sorted(set(ports) - {1194}):
            self.ours += ["-p", str(port)]
            self.theirs += ["-d", f"udp.port=={port},openvpn", "-d", f"tcp.port=={port},openvpn"]


def sessions_workload(sessions=24000):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sessions_capture

    return Workload(sessions_capture.cached(sessions), sessions_capture.ports())


def repeat_workload(folder, packets):
    capture = folder / "big.pcap"
    build(packets, capture)
    return Workload(capture, [12345, 443])


# (output, what it is judged against, target for ovpndiag's time / the other's, what the target says)
PAIRS = {
    "listing": ("tshark -r", 1.0, "at least as fast as tshark -r"),
    "sessions": ("ovpndiag dissect", 1.5, "at most 1.5x the listing"),
    "json": ("tshark -T ek", 0.2, "at least 5x faster than tshark -T ek"),
    "tree": ("tshark -V", 2.0, "at most 2x tshark -V"),
    "analyze": ("ovpndiag dissect", 1.5, "at most 1.5x the listing"),
}


def commands(workload, outputs, tshark):
    """(name, argv) of every command the outputs need, each once."""
    ours, theirs = workload.ours, workload.theirs
    wanted = {"listing": [("ovpndiag dissect", ours), ("ovpndiag dissect -j 1", ours + ["-j", "1"])],
              "sessions": [("ovpndiag dissect", ours), ("ovpndiag dissect --sessions", ours + ["--sessions"])],
              "json": [("ovpndiag dissect --json", ours + ["--json"])],
              "tree": [("ovpndiag dissect -V", ours + ["-V"])],
              "analyze": [("ovpndiag dissect", ours), ("ovpndiag analyze", analyze_argv(ours))]}
    if tshark:
        wanted["listing"].append(("tshark -r", theirs))
        wanted["json"].append(("tshark -T ek", theirs + ["-T", "ek"]))
        wanted["tree"].append(("tshark -V", theirs + ["-V"]))
    runs = {}
    for output in outputs:
        for name, argv in wanted[output]:
            runs.setdefault(name, argv)
    return list(runs.items())


def ours_for(output):
    return {"listing": "ovpndiag dissect", "sessions": "ovpndiag dissect --sessions",
            "json": "ovpndiag dissect --json", "tree": "ovpndiag dissect -V", "analyze": "ovpndiag analyze"}[output]


def analyze_argv(ours):
    """``ovpndiag analyze`` with the listing's capture and ports."""
    at = ours.index("dissect")
    return ours[:at] + ["analyze"] + ours[at + 1:]


def report_pairs(outputs, times):
    """Each output's ratio to what it is judged against: the median of the per-round ratios."""
    print("ratios (median of the rounds' ratios; target):")
    for output in outputs:
        other, target, says = PAIRS[output]
        ours = ours_for(output)
        if other not in times:
            continue
        ratios = [a / b for a, b in zip(times[ours], times[other])]
        ratio = statistics.median(ratios)
        verdict = "met" if ratio <= target else "NOT met"
        print(f"  {output:<9} {ours} / {other}: {ratio:5.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
              f"target <= {target:g}, {says}: {verdict}")


def session_memory(analyze=False):
    """What a finished session costs --sessions (or analyze): peak memory on 24,000 and
    144,000 sessions."""
    peaks = {}
    name = "analyze" if analyze else "--sessions"
    for sessions in (24000, 144000):
        workload = sessions_workload(sessions)
        argv = analyze_argv(workload.ours) if analyze else workload.ours + ["--sessions"]
        started = time.perf_counter()
        peaks[sessions] = peak_memory(argv)
        print(f"{name} on {sessions:,} sessions: peak memory {peaks[sessions]:7.1f} MB "
              f"({time.perf_counter() - started:.1f} s, sampled)")
    per_session = (peaks[144000] - peaks[24000]) * 2 ** 20 / 120000
    print(f"{name}: a finished session costs {per_session:,.0f} bytes ((peak at 144,000 - at 24,000) / 120,000); "
          f"target: a few hundred")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("sessions", "repeat"), default="sessions")
    parser.add_argument("--sessions", type=int, default=24000, help="sessions workload: sessions (default 24000)")
    parser.add_argument("--packets", type=int, default=500000, help="repeat workload: packets (default 500000)")
    parser.add_argument("--outputs", default="listing,sessions,json",
                        help="comma-separated: listing, sessions, json, tree, analyze "
                             "(default listing,sessions,json)")
    parser.add_argument("--session-memory", action="store_true",
                        help="also measure a finished session's memory (24,000 vs 144,000 sessions)")
    parser.add_argument("--keep", help="keep the built capture at this path")
    parser.add_argument("--skip-tshark", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3)")
    args = parser.parse_args()
    outputs = [output.strip() for output in args.outputs.split(",") if output.strip()]
    unknown = set(outputs) - set(PAIRS)
    if unknown:
        parser.error(f"unknown outputs: {', '.join(sorted(unknown))}")
    folder = Path(tempfile.mkdtemp(prefix="ovpndiag-bench-"))
    try:
        workload = sessions_workload(args.sessions) if args.workload == "sessions" \
            else repeat_workload(folder, args.packets)
        capture = workload.capture
        print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB)")
        runs = commands(workload, outputs, not args.skip_tshark and shutil.which("tshark"))
        with open(capture, "rb") as f:  # in the page cache (and written back) before any run
            while f.read(1 << 20):
                pass
        os.sync()
        times = {name: [] for name, _argv in runs}
        codes = {}
        for _round in range(args.repeat):  # interleaved, so a slow spell of the machine hits all
            for name, argv in runs:
                elapsed, codes[name] = timed(argv)
                times[name].append(elapsed)
        frames = count_frames(capture)
        print(f"{frames:,} frames; {args.repeat} timed runs each (best, median), then one run for peak memory:")
        for name, argv in runs:
            best, median = min(times[name]), statistics.median(times[name])
            state = "" if codes[name] == 0 else f"  (exit {codes[name]})"
            print(f"{name:<28} {best:6.2f} s {frames / best / 1000:6.1f} k/s, median {median:6.2f} s "
                  f"{frames / median / 1000:6.1f} k/s  peak memory {peak_memory(argv):6.1f} MB{state}")
        report_pairs(outputs, times)
        if args.session_memory and args.workload == "sessions":
            if "sessions" in outputs or "analyze" not in outputs:
                session_memory()
            if "analyze" in outputs:
                session_memory(analyze=True)
        if args.keep:
            shutil.copy(capture, args.keep)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def count_frames(path):
    """Frames in a classic pcap (the rate's numerator)."""
    with open(path, "rb") as f:
        data = f.read()
    count, offset = 0, 24
    while offset + 16 <= len(data):
        offset += 16 + struct.unpack_from("<I", data, offset + 8)[0]
        count += 1
    return count


if __name__ == "__main__":
    main()
