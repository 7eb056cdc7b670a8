#!/usr/bin/env python3
"""ovpndiag dissect beside tshark on a capture of 500,000+ packets.

Builds (in a temporary folder) a control-heavy capture by repeating the bundled
real Ethernet captures, each repetition on its own client ports and shifted in
time, then times, in one run and on the same file:

  ovpndiag dissect FILE -p 12345 -p 443            (one line per packet; workers by default)
  ovpndiag dissect FILE ... -j 1                    (the same in one process)
  tshark -r FILE -d udp.port==12345,openvpn ...     (its one-line listing)
  ovpndiag dissect FILE ... --json                  (JSON Lines)
  tshark -r FILE ... -T ek                          (its JSON)

with output to /dev/null. Each command is timed --repeat times (rounds interleaved,
so a slow spell of a shared machine hits every command alike; best and median are
reported), then run once more for its peak memory (for ovpndiag the sum over its
worker processes; see tree_memory), since sampling /proc would slow a timed run.
Issue 4 asks: listing at least as fast as tshark, --json at least as fast as
tshark -T ek, and ovpndiag's peak memory under 150 MB at any size.

    python3 benchmarks/dissect_speed.py [--packets 500000] [--repeat 3] [--keep FILE]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=500000)
    parser.add_argument("--keep", help="keep the built capture at this path")
    parser.add_argument("--skip-tshark", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ovpndiag-bench-"))
    try:
        capture = folder / "big.pcap"
        count = build(args.packets, capture)
        print(f"capture: {count:,} packets, {capture.stat().st_size / 1e6:.0f} MB")
        ours = [sys.executable, "-m", "ovpndiag", "dissect", str(capture), "-p", "12345", "-p", "443"]
        decode_as = ["-d", "udp.port==12345,openvpn", "-d", "tcp.port==443,openvpn"]
        runs = [("ovpndiag dissect", ours), ("ovpndiag dissect -j 1", ours + ["-j", "1"]),
                ("ovpndiag dissect --json", ours + ["--json"])]
        if not args.skip_tshark and shutil.which("tshark"):
            runs += [("tshark -r", ["tshark", "-r", str(capture), *decode_as]),
                     ("tshark -T ek", ["tshark", "-r", str(capture), *decode_as, "-T", "ek"])]
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
        print(f"{args.repeat} timed runs each (best, median), then one run for peak memory:")
        for name, argv in runs:
            best, median = min(times[name]), statistics.median(times[name])
            state = "" if codes[name] == 0 else f"  (exit {codes[name]})"
            print(f"{name:<26} {best:6.2f} s {count / best / 1000:6.1f} k/s, median {median:6.2f} s "
                  f"{count / median / 1000:6.1f} k/s  peak memory {peak_memory(argv):6.1f} MB{state}")
        if args.keep:
            shutil.copy(capture, args.keep)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
