#!/usr/bin/env python3
"""How much a monitoring check costs, beside the floor of importing Scapy's core.

Starts a real OpenVPN 2.6 server on loopback (needs root and openvpn), then runs,
interleaved, N times each:
  python -c "import scapy.packet"                       (the floor)
  ovpndiag check 127.0.0.1 -p PORT --tls-auth ta.key    (a whole check)
and prints median and best wall times, their ratio, and peak RSS of each.
Issue 3 asks for a ratio under 1.5 and a check under 70 MB.

    sudo python3 benchmarks/check_speed.py [-n 15]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def run(argv):
    """Wall time (s) and peak RSS (MB) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss / 1024, code


def interleaved(commands, n, label=""):
    """Run each (name, argv) of ``commands`` in turn, ``n`` times (after one run each to warm
    the page cache), print each one's median and best wall time and peak RSS; return the
    medians by name. A command other than the first that exits non-zero stops it all."""
    results = {name: [] for name, _argv in commands}
    for _name, argv in commands:
        run(argv)
    for _ in range(n):
        for index, (name, argv) in enumerate(commands):
            elapsed, rss, code = run(argv)
            if index and code != 0:
                raise SystemExit(f"{name} failed with exit {code}")
            results[name].append((elapsed, rss))
    medians = {}
    for name, samples in results.items():
        times = [t for t, _ in samples]
        medians[name] = statistics.median(times)
        print(f"{name:<20} median {medians[name] * 1000:7.1f} ms  best {min(times) * 1000:7.1f} ms  "
              f"peak RSS {max(r for _, r in samples):5.1f} MB  ({len(samples)} runs{label})")
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    from servers import OpenVPNServer

    server = OpenVPNServer(proto="udp", wrapping="tls-auth", auth="SHA256").start()
    try:
        floor = [sys.executable, "-c", "import scapy.packet"]
        check = [sys.executable, "-m", "ovpndiag", "check", server.host, "-p", str(server.port),
                 "--tls-auth", str(ROOT / "captures/keys/ta.key"), "--auth", "SHA256"]
        summary = interleaved((("import scapy.packet", floor), ("ovpndiag check", check)), args.n)
    finally:
        server.stop()
    ratio = summary["ovpndiag check"] / summary["import scapy.packet"]
    print(f"ratio check / import scapy.packet (medians): {ratio:.2f}  (target < 1.5)")


if __name__ == "__main__":
    main()
