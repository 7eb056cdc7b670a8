#!/usr/bin/env python3
"""The handshake client's network phase beside the openvpn 2.6 binary's, same server, same run.

Starts a real OpenVPN 2.6 server on loopback (needs root, openvpn and tcpdump), then,
interleaved, N times each:
  ovpndiag.client: first reset sent -> PUSH_REPLY (the push stage's elapsed), and
                   -> echo answered (the data stage's), from the Client's own clock;
  openvpn --client: its first packet to the server (tcpdump's time) -> the log line
                   "Initialization Sequence Completed" (--machine-readable-output: microseconds).
Prints median and best of each, and the ratios of the medians (and the median of each round's
ratio, and the ratio of the bests: on a busy machine the medians carry other processes' noise).
Issue 11 asks for the client's data phase at most 1.5x the binary's over UDP and at most half
of it over TCP.

    sudo python3 benchmarks/handshake_phase.py [-n 15] [--proto udp|tcp]
"""

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
KEYS = ROOT / "captures" / "keys"


def ours(server, stage):
    from ovpndiag.client import Client, HandshakeSettings
    from ovpndiag.settings import probe_settings

    settings = HandshakeSettings(probe=probe_settings(host=server.host, port=server.port, proto=server.proto,
                                                      timeout=5),
                                 ca=str(KEYS / "ca.crt"), cert=str(KEYS / "client.crt"), key=str(KEYS / "client.key"))
    result = Client(settings).run(stage)
    if result.verdict != "ok":
        raise SystemExit(f"ovpndiag.client failed: {result.message}")
    return result.stages[-1].elapsed


def binary(server):
    """Seconds from the binary's first packet with a payload to Initialization Sequence Completed."""
    from servers import OpenVPNClient

    if server.proto == "udp":
        bpf = f"udp and dst port {server.port}"
    else:  # the reset, not the SYN: our clock also starts at the reset, after connect()
        bpf = f"tcp and dst port {server.port} and tcp[tcpflags] & tcp-push != 0"
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-tt", "-l", "-c", "1", bpf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in dump.stderr:  # "listening on lo ..." once it captures
        if "listening" in line:
            break
    else:
        raise SystemExit("tcpdump did not start")
    client = OpenVPNClient(server, extra=["--machine-readable-output"])
    try:
        client.start()
        first = float(dump.communicate(timeout=10)[0].split()[0])
        done = re.search(r"^(\d+\.\d+) .*Initialization Sequence Completed", client.log_text(), re.M)
        return float(done.group(1)) - first
    finally:
        client.stop()
        if dump.poll() is None:
            dump.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each")
    parser.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    from servers import OpenVPNServer

    server = OpenVPNServer(proto=args.proto).start()
    results = {"ovpndiag push": [], "ovpndiag data": [], "openvpn binary": []}
    try:
        ours(server, "data"), binary(server)  # warm up
        runs = {"ovpndiag push": lambda: ours(server, "push"), "ovpndiag data": lambda: ours(server, "data"),
                "openvpn binary": lambda: binary(server)}
        for number in range(args.n):
            names = list(runs)
            for name in names[number % 3:] + names[:number % 3]:  # each goes first as often
                results[name].append(runs[name]())
                time.sleep(0.05)
    finally:
        server.stop()
    medians = {name: statistics.median(times) for name, times in results.items()}
    print(f"{args.proto}, {args.n} runs each (median, best), ms:")
    for name, times in results.items():
        print(f"  {name:16} {medians[name] * 1000:7.2f} {min(times) * 1000:7.2f}")
    best = {name: min(times) for name, times in results.items()}
    for name in ("ovpndiag push", "ovpndiag data"):
        # each round's own ratio, then their median: a round's runs are close in time, so
        # this ratio moves least when other processes come and go
        paired = statistics.median(ours / theirs for ours, theirs in zip(results[name], results["openvpn binary"]))
        print(f"  {name} / openvpn binary: {medians[name] / medians['openvpn binary']:.2f} "
              f"(per round: {paired:.2f}, bests: {best[name] / best['openvpn binary']:.2f})")


if __name__ == "__main__":
    main()
