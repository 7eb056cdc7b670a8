#!/usr/bin/env python3
"""Speed and memory of ovpndiag.capture alone (no OpenVPN dissection).

Builds, in a temporary folder, captures of N packets by repeating the bundled real
loopback captures - each repetition on its own client port and shifted in time -
then reads each in a fresh child process with ``read_transport`` (frames, link
layer, IP, UDP, TCP reassembly, a Datagram per payload) and reports packets per
second and the child's peak RSS (``resource.getrusage``):

  udp        the UDP captures only: reading + decoding UDP, the hot path
  mixed      UDP and TCP captures together (TCP reassembly on every segment)
  udp x4     four times as many UDP packets: peak memory must not grow with the file
  mixed x4   the same for the mixed capture (thousands of TCP connections)

    python3 benchmarks/capture_read.py [--packets 500000] [--runs 3] [--keep DIR]
"""

import argparse
import json
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
sys.path.insert(0, str(ROOT))


def sources(transports):
    """[(frames, server port)] of the plain loopback Ethernet captures."""
    manifest = json.loads((CAPTURES / "manifest.json").read_text())
    out = []
    for entry in manifest:
        if (entry["transport"] in transports and entry.get("linktype", 1) == 1 and entry.get("format", "pcap") == "pcap"
                and not entry.get("vlan") and not entry.get("fragmented") and not entry.get("derived_from")):
            data = (CAPTURES / entry["file"]).read_bytes()
            frames, offset = [], 24
            while offset + 16 <= len(data):
                sec, usec, caplen, _orig = struct.unpack_from("<IIII", data, offset)
                frames.append((sec + usec / 1e6, data[offset + 16:offset + 16 + caplen]))
                offset += 16 + caplen
            out.append((frames, entry["port"]))
    return out


def build(path, target, transports):
    """Repeat the captures until ``target`` packets, each repetition on new client ports."""
    written, repetition = 0, 0
    captures = sources(transports)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        start = 1_700_000_000.0
        while written < target:
            for number, (frames, server_port) in enumerate(captures):
                client_port = 1024 + (repetition * len(captures) + number) % 60000
                base = frames[0][0]
                for stamp, frame in frames:
                    frame = bytearray(frame)
                    ip = 14
                    l4 = ip + (frame[ip] & 15) * 4 if frame[12:14] == b"\x08\x00" else ip + 40
                    sport, dport = struct.unpack_from("!HH", frame, l4)
                    struct.pack_into("!HH", frame, l4, client_port if sport != server_port else sport,
                                     client_port if dport != server_port else dport)
                    t = start + (stamp - base)
                    out.write(struct.pack("<IIII", int(t), int(t % 1 * 1e6), len(frame), len(frame)))
                    out.write(frame)
                    written += 1
                start += 10.0
            repetition += 1
    return written


def child(path, runs):
    """In a fresh process: read the file ``runs`` times, best time; then peak RSS."""
    from ovpndiag.capture import Transport, read_transport

    best = None
    for _ in range(runs):
        transport = Transport()
        t0, c0 = time.perf_counter(), time.process_time()
        datagrams = 0
        for _datagram in read_transport(path, transport):
            datagrams += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if best is None or cpu < best[1]:
            best = (wall, cpu, datagrams, transport.counts.frames)
    wall, cpu, datagrams, frames = best
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": frames, "datagrams": datagrams, "wall": wall, "cpu": cpu, "rss_mb": rss}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3, help="reads per file; the fastest counts")
    ap.add_argument("--keep", type=Path, help="build the captures in this folder and keep them")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs)
        return 0

    folder = args.keep or Path(tempfile.mkdtemp(prefix="capture-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = [("udp", ("udp",), args.packets), ("mixed", ("udp", "tcp"), args.packets),
             ("udp x4", ("udp",), 4 * args.packets), ("mixed x4", ("udp", "tcp"), 4 * args.packets)]
    try:
        print(f"{'capture':8} {'frames':>9} {'MB':>6} {'datagrams':>10} {'packets/s':>10} "
              f"{'(cpu)':>10} {'peak RSS':>9}")
        for label, transports, target in cases:
            path = folder / f"{label.replace(' ', '')}.pcap"
            build(path, target, transports)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--runs", str(args.runs)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"{label:8} {r['frames']:9d} {path.stat().st_size / 1e6:6.0f} {r['datagrams']:10d} "
                  f"{r['frames'] / r['wall']:10,.0f} {r['frames'] / r['cpu']:10,.0f} {r['rss_mb']:7.1f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
