#!/usr/bin/env python3
"""What a whole-handshake monitoring check costs, beside the floor of importing Scapy's core.

Starts a real OpenVPN 2.6 server on loopback with the tests' throwaway PKI (needs root
and openvpn), then runs, interleaved, N times each:
  python -c "import scapy.packet"                                   (the floor)
  ovpndiag check 127.0.0.1 -p PORT --stage data --ca .. --cert .. --key ..
                                       (reset, TLS, key-method 2, push, an ICMP echo, EXIT)
and prints median and best wall times, their ratio, and the peak RSS of each.
Issue 11 asks for a ratio of at most 2 and at most 80 MB.

    sudo python3 benchmarks/check_stage_speed.py [-n 15] [--proto tcp]
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from check_speed import interleaved  # noqa: E402 - one way to time child processes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each command")
    parser.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    from pki import get_pki
    from servers import pki_server

    pki = get_pki()
    server = pki_server("valid", proto=args.proto).start()
    try:
        floor = [sys.executable, "-c", "import scapy.packet"]
        check = [sys.executable, "-m", "ovpndiag", "check", server.host, "-p", str(server.port), "--proto", args.proto,
                 "--stage", "data", "--ca", pki.ca, "--cert", pki.client["valid"], "--key", pki.client_key["valid"]]
        medians = interleaved((("import scapy.packet", floor), ("check --stage data", check)), args.n,
                              f", {args.proto}")
    finally:
        server.stop()
    ratio = medians["check --stage data"] / medians["import scapy.packet"]
    print(f"ratio check --stage data / import scapy.packet (medians): {ratio:.2f}  (target <= 2)")


if __name__ == "__main__":
    main()
