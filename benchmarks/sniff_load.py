#!/usr/bin/env python3
"""ovpndiag sniff under load: real-shaped P_DATA_V2 packets sent on loopback at a fixed rate.

Takes the data-channel packets of a real capture (captures/udp-tls-crypt.pcap: AEAD
P_DATA_V2, both directions), and sends --count of them between two UDP sockets on
127.0.0.1 at --rate packets per second, each direction's packet-id counting up from 1
as a real tunnel's does. Both sockets are bound and never read, so the kernel makes
no ICMP port-unreachable answers; only 127.0.0.1 is ever a destination, and the run
is bounded (at most 10,000,000 packets, 1,000,000/s, 120 s).

While it sends, ``ovpndiag sniff -i lo -p PORT`` runs (it is started first and waited
for until it says it listens); once every packet is sent, it is stopped with SIGINT
(as Ctrl-C does) and left to read what was captured to its end. Then it reports:

  sent      packets sent (and the rate reached)
  shown     P_DATA_V2 lines sniff printed (the packets it dissected and showed)
  dropped   what sniff's closing summary reports as dropped by the kernel
  missing   sent - shown - dropped: packets lost with nobody saying so (must be 0;
            below 0 when other traffic on lo was dropped too: the count is the interface's)
  CPU       the capture process's CPU time, start-up included (a packet's cost, all in)

--tcpdump runs plain ``tcpdump -i lo -w /dev/null`` instead of sniff, to see what
the kernel itself delivers at that rate on this machine.

    python3 benchmarks/sniff_load.py [--rate 150000] [--count 300000] [--repeat 1] [-- SNIFF-OPTIONS]
"""

import argparse
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT / "captures" / "udp-tls-crypt.pcap"
MAX_COUNT, MAX_RATE, MAX_SECONDS = 10_000_000, 1_000_000, 120.0


def data_packets(path=CAPTURE):
    """The P_DATA_V2 payloads of a classic pcap of Ethernet/IPv4/UDP frames, split by
    direction: (from the lower port, from the higher port)."""
    data = path.read_bytes()
    off, by_port = 24, {}
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) > 42 and frame[12:14] == b"\x08\x00" and frame[23] == 17 and frame[42] >> 3 == 9:
            sport = struct.unpack_from("!H", frame, 34)[0]
            by_port.setdefault(sport, []).append(frame[42:])
    if len(by_port) != 2:
        raise SystemExit(f"{path}: expected P_DATA_V2 packets in two directions, found {len(by_port)}")
    return [by_port[port] for port in sorted(by_port)]


def packets(count):
    """``count`` packets alternating direction; each direction's AEAD packet-id (bytes
    4..7 of a P_DATA_V2 packet) counts up from 1, the rest are a real packet's bytes."""
    directions = data_packets()
    made = []
    for index in range(count):
        side = directions[index % 2]
        original = side[(index // 2) % len(side)]
        made.append(original[:4] + struct.pack("!I", index // 2 + 1) + original[8:])
    return made


def bound_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a sink: what it cannot hold is dropped
    return sock


def send(payloads, rate, client, server):
    """Send at ``rate`` per second in 1 ms batches; returns (sent, seconds)."""
    ends = [server.getsockname(), client.getsockname()]
    senders = [client.sendto, server.sendto]
    batch = max(1, rate // 1000)
    start = time.perf_counter()
    deadline = start + MAX_SECONDS
    sent = 0
    for first in range(0, len(payloads), batch):
        for index in range(first, min(first + batch, len(payloads))):
            side = index % 2
            try:
                senders[side](payloads[index], ends[side])
                sent += 1
            except OSError:  # ENOBUFS: a packet the kernel refused to send is not counted
                pass
        ahead = start + (first + batch) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        if time.perf_counter() > deadline:
            break
    return sent, time.perf_counter() - start


def start_and_wait(argv, stdout_path, stderr_path, ready, timeout=20.0):
    """Start a capture process and wait until its stderr says it listens. Its output
    goes to a file: a pipe read by this process would take CPU from the sender."""
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while ready not in Path(stderr_path).read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{argv[0]} did not start: {Path(stderr_path).read_text()}")
        time.sleep(0.05)
    return process


def count_shown(path, port):
    """This run's P_DATA_V2 packets in sniff's output (one-line listing or --json); other
    tests' tunnels on lo may show up too."""
    marks = (f":{port} ".encode(), f'"sport": {port},'.encode(), f'"dport": {port},'.encode())
    with open(path, "rb") as lines:
        return sum(1 for line in lines if b"P_DATA_V2" in line and any(mark in line for mark in marks))


def one_run(args, payloads, sniff_options):
    client, server = bound_socket(), bound_socket()
    port = server.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        output, errors = Path(folder) / "stdout", Path(folder) / "stderr"
        if args.tcpdump:
            argv = ["tcpdump", "-i", "lo", "-n", "-w", "/dev/null", "-B", "65536", f"udp port {port}"]
            process = start_and_wait(argv, output, errors, "listening on")
        else:
            argv = [sys.executable, "-m", "ovpndiag", "sniff", "-i", "lo", "-p", str(port), *sniff_options]
            process = start_and_wait(argv, output, errors, "listening on")
        sent, seconds = send(payloads, args.rate, client, server)
        stopped = time.perf_counter()
        time.sleep(0.2)  # the last packets reach the capture
        process.send_signal(signal.SIGINT)
        _pid, _status, usage = os.wait4(process.pid, 0)
        process.returncode = 0
        cpu = usage.ru_utime + usage.ru_stime
        shown = count_shown(output, port)
        drained = time.perf_counter() - stopped
        summary = errors.read_text()
    client.close()
    server.close()
    if args.tcpdump:
        shown = int(re.search(r"(\d+) packets captured", summary).group(1))
    dropped = re.search(r"(\d+) packets? dropped by kernel", summary)
    dropped = int(dropped.group(1)) if dropped else None
    missing = sent - shown - (dropped or 0)
    print(f"sent {sent:,} in {seconds:.2f} s ({sent / seconds:,.0f}/s); {'captured' if args.tcpdump else 'shown'} "
          f"{shown:,} ({100 * shown / sent:.1f}%); dropped by kernel (reported) "
          f"{'not reported' if dropped is None else f'{dropped:,}'}; unaccounted {missing:,}; "
          f"done {drained:.1f} s after the last packet was sent; {cpu:.2f} s of CPU "
          f"({1e6 * cpu / max(1, shown):.1f} us a packet shown)", flush=True)
    if args.verbose:
        print(summary.rstrip())
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=150_000, help="packets per second (default 150000)")
    parser.add_argument("--count", type=int, default=300_000, help="packets to send (default 300000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs (default 1)")
    parser.add_argument("--tcpdump", action="store_true", help="run plain tcpdump instead of sniff")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the capture's stderr")
    parser.add_argument("sniff_options", nargs="*", help="more options for ovpndiag sniff (after --)")
    args = parser.parse_args()
    if not 0 < args.count <= MAX_COUNT or not 0 < args.rate <= MAX_RATE:
        parser.error(f"--count must be 1..{MAX_COUNT:,} and --rate 1..{MAX_RATE:,}")
    if os.geteuid() != 0:
        print("note: capturing needs root (or CAP_NET_RAW)", file=sys.stderr)
    payloads = packets(args.count)
    unaccounted = [one_run(args, payloads, args.sniff_options) for _ in range(args.repeat)]
    sys.exit(1 if any(unaccounted) else 0)


if __name__ == "__main__":
    main()
