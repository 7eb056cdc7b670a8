"""One scenario's recording, start to finish.

``record(sc, idx, procs, layout)`` brings up the scenario's network, starts the capture
(before the server, or once connected for a mid-session capture), the server, then the
client (or the probe), lets the scenario happen (keepalives, pings, a renegotiation, a
float, a flood, or a failing handshake's attempts), stops everything, checks the logs and
the capture, and only then moves the files into place; a failed check leaves ``*.tmp``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from . import handshake
from .checks import check_capture
from .layout import Layout
from .netns import Net, start_relay
from .openvpn import busy_client_argv, client_argv, run_probe, server_argv, static_key_argv
from .pki import key_fragments
from .procs import INIT_DONE, Procs, wait_for
from .scenario import (BUSY_ATTEMPT_TIMEOUT, BUSY_STAY_SECONDS, BUSY_TAIL_SECONDS, CONNECT_TIMEOUT, FAIL_SECONDS,
                       KEEPALIVE_SECONDS, RELAY_PORT, RENEG_TIMEOUT, Scenario, Side)


def start_capture(sc: Scenario, net: Net, path: Path, procs: Procs) -> subprocess.Popen:
    if sc.capture_tool == "dumpcap":
        argv, ready = ["dumpcap", "-i", net.capture_iface, "-f", f"port {sc.port}", "-w", str(path)], "Capturing on"
    else:
        argv = ["tcpdump", "-i", net.capture_iface, "-U", "-s", "0", "-Z", "root", *sc.capture_args,
                "-w", str(path)]
        if sc.net == "lo":
            # A private link carries only the scenario's traffic; there a port filter would
            # only lose the IP fragments that carry no UDP header.
            # With nothing listening, the kernel's ICMP port unreachable is the answer: keep it.
            argv.append(f"port {sc.port} or icmp" if sc.kind == "no-server" else f"port {sc.port}")
        ready = "listening on"
    dump = procs.start(sc.capture_tool, net.run(net.server_ns, argv),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(5):
        line = dump.stderr.readline()
        if ready in line:
            return dump
        if not line:
            break
    raise RuntimeError(f"{sc.capture_tool} did not start: {line.strip()}")


def start_outer_tunnel(sc: Scenario, idx: int, net: Net, procs: Procs, logs: Path) -> list[subprocess.Popen]:
    """For "nested": a plain UDP OpenVPN tunnel between the namespaces, for the captured
    session to run through. Its logs go next to the captured session's."""
    outer = Scenario(f"{sc.name}-outer", "udp", 4, 1194, "none", Side(), Side(), "connected", "", "")
    started = []
    for role, ns, argv in (("server", net.server_ns, server_argv(outer, idx, local=net.link_addr)),
                           ("client", net.client_ns, client_argv(outer, idx, remote=net.link_addr))):
        log = logs / f"{sc.name}.outer-{role}.log"
        with open(log, "w") as f:
            p = procs.start(f"outer {role}", net.run(ns, argv), stdout=f, stderr=subprocess.STDOUT)
        started.append(p)
        if not wait_for(log, INIT_DONE, CONNECT_TIMEOUT, p):
            raise RuntimeError(f"outer tunnel {role} did not come up; see {log}")
    return started


def tunnel_ping(sc: Scenario, net: Net, target: str) -> None:
    """A few pings through the tunnel (data-channel packets); `tunnel_ping` is their size."""
    if not sc.tunnel_ping:
        return
    ping = subprocess.run(net.run(net.client_ns, [
        "ping", "-c", "3", "-i", "0.3", "-W", "2", "-s", str(sc.tunnel_ping), target]),
        capture_output=True, text=True)
    if ping.returncode != 0:
        raise RuntimeError("pings through the tunnel failed: " + ping.stdout[-200:])


BUSY_LOG_HEADER = "##### record.py: client on port"   # starts each busy client's part of the client log


def check_busy_logs(sc: Scenario, client_log: str, server_log: str) -> list[str]:
    """Each busy client's part of the client log, and the server log about it, say what
    its row says (a good client connected once, a failing one failed as it should)."""
    problems = []
    parts = {int(part.split(None, 1)[0]): part for part in client_log.split(BUSY_LOG_HEADER)[1:]}
    for c in sc.clients:
        text = parts.get(c.port, "")
        if not re.search(c.client_log_expect, text):
            problems.append(f"client {c.port} ({c.kind}): its log lacks /{c.client_log_expect}/")
        if (INIT_DONE in text) != c.good:
            problems.append(f"client {c.port} ({c.kind}): {'no ' if c.good else ''}connection")
        if c.server_log_expect and not re.search(c.server_log_expect.format(port=c.port), server_log):
            problems.append(f"client {c.port} ({c.kind}): server log lacks /{c.server_log_expect}/")
    return problems


class Recording:
    """The state of one scenario's run: its network, processes and unfinished files."""

    def __init__(self, sc: Scenario, idx: int, procs: Procs, layout: Layout):
        self.sc, self.idx, self.procs, self.layout = sc, idx, procs, layout
        self.pcap = layout.out / f"{sc.file}.tmp"
        self.server_log = layout.logs / f"{sc.name}.server.log.tmp"
        self.client_log = layout.logs / f"{sc.name}.client.log.tmp"
        self.net = Net(sc, idx)
        self.dump = self.server = self.client = self.relay = None
        self.dump_stats = ""

    def run(self) -> None:
        for f in (self.pcap, self.server_log, self.client_log):
            f.unlink(missing_ok=True)
        self.net.up(self.procs)
        try:
            self._run_peers()
        finally:
            self.net.down()
        self._verify()
        self._keep()

    def _run_peers(self) -> None:
        sc, net, procs = self.sc, self.net, self.procs
        outer = start_outer_tunnel(sc, self.idx, net, procs, self.layout.logs) if sc.net == "nested" else []
        if sc.capture_start == "handshake":
            self.dump = start_capture(sc, net, self.pcap, procs)
            time.sleep(0.3)
        with open(self.server_log, "w") as slog, open(self.client_log, "w") as clog:
            if sc.kind != "no-server":
                self._start_server(slog)
            if sc.kind == "probe":
                run_probe(sc, clog)
            elif sc.kind == "handshake":
                handshake.run_handshake(sc, clog, self.layout)
            elif sc.kind == "busy":
                self._run_busy(clog)
            else:
                self._start_client(clog)
            if sc.outcome == "connected" and sc.kind != "handshake":
                self._connected(clog)
            elif sc.outcome == "failed":
                time.sleep(FAIL_SECONDS)
            if self.client is not None:
                procs.stop(self.client)
            time.sleep(0.3)
            if self.server is not None:
                procs.stop(self.server)
        time.sleep(0.3 if sc.net == "lo" else 1.0)
        if self.dump is not None:
            procs.stop(self.dump)
            self.dump_stats = self.dump.stderr.read()
            self.dump.stderr.close()
        for p in reversed(outer):
            procs.stop(p)
        if net.relay is not None:
            procs.stop(net.relay)
            net.relay.stdout.close()
        if self.relay is not None:
            procs.stop(self.relay)
            (self.layout.logs / f"{sc.name}.relay.log").write_text(self.relay.stdout.read())
            self.relay.stdout.close()

    def _start_server(self, slog) -> None:
        sc, idx, net = self.sc, self.idx, self.net
        nested = sc.net == "nested"
        if sc.kind == "static-key":
            argv = static_key_argv(sc, idx, "server", net.server_addr)
        else:
            argv = server_argv(sc, idx, local=net.server_addr, subnet=f"10.202.{idx}.0" if nested else None,
                               dev=f"ovdiag-is{idx}" if nested else None)
        self.server = self.procs.start("server", net.run(net.server_ns, argv), stdout=slog,
                                       stderr=subprocess.STDOUT)
        # A static-key peer completes its initialisation only once the other one is there.
        ready = r"link local" if sc.kind == "static-key" else INIT_DONE
        if not wait_for(self.server_log, ready, 10, self.server):
            raise RuntimeError("server did not start; see " + str(self.server_log))

    def _start_client(self, clog) -> None:
        sc, idx, net = self.sc, self.idx, self.net
        if sc.kind == "static-key":
            argv = static_key_argv(sc, idx, "client", net.server_addr)
        else:
            port = None
            if sc.float_client:
                self.relay = start_relay(self.procs, "udp", [str(RELAY_PORT), net.server_addr, str(sc.port)],
                                         ns=net.client_ns)
                port = RELAY_PORT
            argv = client_argv(sc, idx, remote="127.0.0.1" if port else net.server_addr, port=port,
                               dev=f"ovdiag-ic{idx}" if sc.net == "nested" else None)
        self.client = self.procs.start("client", net.run(net.client_ns, argv), stdout=clog,
                                       stderr=subprocess.STDOUT)

    def _run_busy(self, clog) -> None:
        """A busy scenario's clients, each started on schedule: a good one is stopped
        BUSY_STAY_SECONDS after it connected, a failing one gives up by itself after its
        ``attempts`` (--connect-retry-max: stopping it from here would race its next attempt,
        which follows a server poll timeout at once) or, where that does not count (AUTH_FAILED
        with --auth-retry nointeract), is stopped in the restart pause after its last attempt.
        Their logs go one after the other into ``clog``."""
        sc, logs = self.sc, {}
        waiting = sorted(sc.clients, key=lambda c: c.start)
        running = {}                    # port -> [client, process, started, connected at]
        t0 = time.monotonic()
        try:
            while waiting or running:
                now = time.monotonic() - t0
                while waiting and waiting[0].start <= now:
                    c = waiting.pop(0)
                    logs[c.port] = self.layout.logs / f"{sc.name}.client-{c.port}.log.tmp"
                    with open(logs[c.port], "w") as f:
                        p = self.procs.start(f"client {c.port}", busy_client_argv(sc, c), stdout=f,
                                             stderr=subprocess.STDOUT)
                    running[c.port] = [c, p, now, None]
                for port, state in list(running.items()):
                    c, p, started, connected = state
                    text = logs[port].read_text(errors="replace")
                    if c.good and connected is None and INIT_DONE in text:
                        state[3] = connected = now
                    if connected is not None and now - connected >= BUSY_STAY_SECONDS or \
                            not c.good and (p.poll() is not None or
                                            text.count("Restart pause") >= c.attempts):
                        self.procs.stop(p)
                        del running[port]
                    elif p.poll() is not None:
                        raise RuntimeError(f"client {port} ({c.kind}) exited early; see {self.client_log}")
                    elif now - started > BUSY_ATTEMPT_TIMEOUT * c.attempts:
                        raise RuntimeError(f"client {port} ({c.kind}) did not finish; see {self.client_log}")
                time.sleep(0.05)
            time.sleep(BUSY_TAIL_SECONDS)
        finally:
            for port, log in sorted(logs.items()):
                c = next(c for c in sc.clients if c.port == port)
                clog.write(f"{BUSY_LOG_HEADER} {port} ({c.kind}): {' '.join(busy_client_argv(sc, c))}\n")
                clog.write(log.read_text(errors="replace"))
                log.unlink()
            clog.flush()

    def _connected(self, clog) -> None:
        """Once the client is up: what the scenario does with the tunnel."""
        sc, net = self.sc, self.net
        if not wait_for(self.client_log, INIT_DONE, CONNECT_TIMEOUT, self.client):
            raise RuntimeError("client did not connect; see " + str(self.client_log))
        if sc.capture_start == "mid-session":
            time.sleep(0.5)             # the handshake's last ACKs are over
            self.dump = start_capture(sc, net, self.pcap, self.procs)
            time.sleep(0.3)
        target = f"10.203.{self.idx}.1" if sc.kind == "static-key" else f"10.201.{self.idx}.1"
        if sc.renegotiation:
            tunnel_ping(sc, net, target)
            # The first TLS session logs one "Control Channel:" line; the renegotiated
            # one logs a second. Then wait until data flows with the new key.
            if not wait_for(self.client_log, r"Control Channel: TLS", RENEG_TIMEOUT, self.client, count=2):
                raise RuntimeError("no renegotiation seen; see " + str(self.client_log))
            time.sleep(1.0 if sc.tunnel_ping else 2.0)
            if sc.tunnel_ping:
                tunnel_ping(sc, net, target)
                time.sleep(1.0)
        elif sc.float_client:
            tunnel_ping(sc, net, target)
            time.sleep(1.0)
            self.relay.send_signal(signal.SIGUSR1)       # the NAT rebinds
            if not wait_for(self.server_log, sc.server_log_expect, 10, self.server):
                raise RuntimeError("the server did not float the client; see " + str(self.server_log))
            tunnel_ping(sc, net, target)
            time.sleep(KEEPALIVE_SECONDS)
        elif sc.flood:
            flood = subprocess.run(net.run(net.client_ns, [
                "ping", "-f", "-q", "-c", str(sc.flood), "-s", "0", "-W", "2", target]),
                capture_output=True, text=True)
            if flood.returncode != 0:
                raise RuntimeError("ping flood through the tunnel failed: " + flood.stdout[-300:])
            clog.write("# record.py: " + flood.stdout.strip().splitlines()[-2] + "\n")
            clog.flush()
            time.sleep(0.5)
        else:
            if sc.tunnel_ping:
                tunnel_ping(sc, net, target)
            time.sleep(KEEPALIVE_SECONDS)

    def _verify(self) -> None:
        """Did the scenario do what it should? Logs first, then the capture."""
        sc = self.sc
        clog_text = self.client_log.read_text(errors="replace")
        slog_text = self.server_log.read_text(errors="replace")
        connected = handshake.connected(clog_text) if sc.kind == "handshake" else INIT_DONE in clog_text
        if sc.outcome == "connected" and not connected:
            raise RuntimeError("expected a connection")
        if sc.outcome == "failed" and connected:
            raise RuntimeError("expected no connection, but the client connected")
        if sc.server_log_expect and not re.search(sc.server_log_expect, slog_text):
            raise RuntimeError(f"server log lacks /{sc.server_log_expect}/")
        if sc.client_log_expect and not re.search(sc.client_log_expect, clog_text):
            raise RuntimeError(f"client log lacks /{sc.client_log_expect}/")
        if sc.kind == "busy":
            problems = check_busy_logs(sc, clog_text, slog_text)
            if problems:
                raise RuntimeError("busy logs: " + "; ".join(problems))
        if sc.kind == "probe" and not re.search(r"SHA512", clog_text):
            raise RuntimeError("the probe did not find the server's SHA512 tls-auth")
        if sc.flood and not re.search(r"\b0 packets dropped by kernel", self.dump_stats):
            raise RuntimeError("tcpdump lost packets: " + self.dump_stats.strip().replace("\n", "; "))
        logs = [clog_text, slog_text]
        if sc.net == "nested":
            logs += [(self.layout.logs / f"{sc.name}.outer-{role}.log").read_text(errors="replace")
                     for role in ("server", "client")]
        for frag in key_fragments():
            if any(frag in text for text in logs):
                raise RuntimeError("key material found in a log")
        problems = check_capture(self.pcap, sc)
        if problems:
            raise RuntimeError("capture check failed: " + "; ".join(problems))

    def _keep(self) -> None:
        sc, layout = self.sc, self.layout
        os.replace(self.pcap, layout.out / sc.file)
        os.replace(self.server_log, layout.logs / f"{sc.name}.server.log")
        os.replace(self.client_log, layout.logs / f"{sc.name}.client.log")
        os.chmod(layout.out / sc.file, 0o644)
        if sc.kind == "handshake":
            handshake.keep_keylog(sc, layout)


def record(sc: Scenario, idx: int, procs: Procs, layout: Layout = Layout()) -> None:
    """Record one scenario (``idx``: its number, for device, namespace and address names)."""
    Recording(sc, idx, procs, layout).run()
