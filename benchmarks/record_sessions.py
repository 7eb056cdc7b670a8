#!/usr/bin/env python3
"""Record short sessions of every wrapping from real OpenVPN 2.6 peers, for the
control-heavy benchmark (sessions_capture.py repeats them into ~500,000 packets).

Starts twelve real OpenVPN 2.6 servers on loopback - every wrapping (none, tls-auth
SHA1/SHA256/SHA512 with key-direction 0/1, tls-crypt, tls-crypt-v2), each over UDP and
over TCP on the same port - and ``tcpdump -i lo`` on those ports, then runs short
sessions against them with real ``openvpn`` clients (``--dev null``, a few at a time,
interleaved): connect, wait for "Initialization Sequence Completed", stay a moment,
exit (SIGTERM; over UDP ``--explicit-exit-notify``). Writes

    benchmarks/data/short-sessions.pcap.gz    the capture (gzip)
    benchmarks/data/short-sessions.json       ports, wrappings and keys (captures/keys/), counts

Keys are the test-only ones in captures/keys/ (via captures/recording, which also makes
the servers' and clients' command lines). Needs root (tun devices for the servers,
packet capture), openvpn and tcpdump. Takes a few minutes.

    sudo python3 benchmarks/record_sessions.py [--sessions 20] [--parallel 6]
"""

import argparse
import concurrent.futures
import gzip
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "captures"))

from recording.layout import CAPTURES  # noqa: E402  (captures/ is not a package)
from recording.openvpn import client_argv, server_argv  # noqa: E402
from recording.procs import INIT_DONE, Procs, wait_for  # noqa: E402
from recording.scenario import Scenario, Side  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
CAPTURE = DATA / "short-sessions.pcap.gz"
DESCRIPTION = DATA / "short-sessions.json"


def _ta(auth):
    return Side("keys/ta.key", auth, 0), Side("keys/ta.key", auth, 1)


# (port, wrapping, (server side, client side)): every transport runs each on the same port.
WRAPPINGS = [
    (1194, "none", (Side(), Side())),
    (1195, "tls-auth", _ta("SHA1")),
    (1196, "tls-auth", _ta("SHA256")),
    (1197, "tls-auth", _ta("SHA512")),
    (1198, "tls-crypt", (Side("keys/tc.key"), Side("keys/tc.key"))),
    (1199, "tls-crypt-v2", (Side("keys/tcv2-server.key"), Side("keys/tcv2-client.key"))),
]


def scenarios():
    for transport in ("udp", "tcp"):
        for port, wrapping, (server, client) in WRAPPINGS:
            exit_notify = ["--explicit-exit-notify", "1"] if transport == "udp" else []
            yield Scenario(f"short-{transport}-{port}", transport, 4, port, wrapping, server, client, "connected",
                           "", "", server_extra=["--duplicate-cn", "--max-clients", "64"],
                           client_extra=["--ifconfig-noexec", "--route-noexec", *exit_notify])


def one_session(sc, number, logs, linger):
    """A real openvpn client's whole short session; True once it connected."""
    log = logs / f"{sc.name}.{number}.client.log"
    argv = client_argv(sc, 0, dev="null")
    at = argv.index("--dev-type")
    del argv[at:at + 2]  # "null" is no tun: the client needs no device
    with open(log, "w") as out:
        client = subprocess.Popen(argv, cwd=CAPTURES, stdout=out, stderr=subprocess.STDOUT)
    try:
        connected = wait_for(log, INIT_DONE, 15, client)
        if connected:
            time.sleep(linger)
        client.send_signal(signal.SIGTERM)
        client.wait(10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return connected


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions per wrapping and transport (default 20)")
    parser.add_argument("--parallel", type=int, default=6, help="clients at a time (default 6)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for tool in ("openvpn", "tcpdump"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    random.seed(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="ovpndiag-sessions-"))
    procs = Procs()
    keep = False
    try:
        pcap = folder / "short-sessions.pcap"
        ports = " or ".join(f"port {port}" for port, _, _ in WRAPPINGS)
        dump = procs.start("tcpdump", ["tcpdump", "-i", "lo", "-U", "-s", "0", "-B", "32768", "-w", str(pcap), ports],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if "listening on" not in dump.stderr.readline():
            raise SystemExit("tcpdump did not start")
        all_scenarios = list(scenarios())
        for idx, sc in enumerate(all_scenarios, start=1):
            log = folder / f"{sc.name}.server.log"
            with open(log, "w") as out:
                server = procs.start(sc.name, server_argv(sc, 200 + idx, dev=f"ovbench-s{idx}"),
                                     stdout=out, stderr=subprocess.STDOUT)
            if not wait_for(log, INIT_DONE, 10, server):
                keep = True
                raise SystemExit(f"{sc.name}: server did not start; see {log}")
        jobs = [(sc, n) for sc in all_scenarios for n in range(args.sessions)]
        random.shuffle(jobs)  # the wrappings interleave in the capture, as on a busy server
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda job: (job[0].name, one_session(job[0], job[1], folder,
                                                                            random.uniform(0.1, 0.6))), jobs))
        failed = [name for name, ok in results if not ok]
        print(f"{len(jobs) - len(failed)} of {len(jobs)} sessions connected in {time.monotonic() - started:.0f} s")
        time.sleep(1.0)
        procs.stop_all()
        stats = dump.stderr.read()
        if failed or not re.search(r"\b0 packets dropped by kernel", stats):
            keep = True  # the logs tell why
            raise SystemExit(f"not kept: {len(failed)} sessions failed ({sorted(set(failed))}); tcpdump: "
                             f"{stats.strip()}; logs in {folder}")
        DATA.mkdir(exist_ok=True)
        with open(pcap, "rb") as source, gzip.open(CAPTURE, "wb", compresslevel=9) as target:
            shutil.copyfileobj(source, target)
        version = subprocess.run(["openvpn", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        DESCRIPTION.write_text(json.dumps({
            "file": CAPTURE.name, "recorded_with": version, "sessions": len(jobs),
            "sessions_per_wrapping_and_transport": args.sessions,
            "servers": [{"transport": sc.transport, "port": sc.port, "wrapping": sc.wrapping,
                         "key": sc.server.key, "auth": sc.server.auth,
                         "server_key_direction": sc.server.key_direction,
                         "client": {"key": sc.client.key, "auth": sc.client.auth,
                                    "key_direction": sc.client.key_direction}}
                        for sc in all_scenarios],
        }, indent=2) + "\n")
        print(f"wrote {CAPTURE} ({CAPTURE.stat().st_size} bytes) and {DESCRIPTION.name}")
    finally:
        procs.stop_all()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
