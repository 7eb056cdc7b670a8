"""Real peers for the probe and check tests: OpenVPN 2.6 servers on loopback,
plus the wrong kinds of service a probe must recognise.

Servers use the test PKI and keys in captures/keys. Each configuration starts
once per test session (``ServerPool``) and stops at its end.
"""

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from captures import CAPTURES

_counter = itertools.count(1)
# Tun names and subnets unique per test process, so parallel runs do not collide.
_TAG = os.getpid() % 10000


def free_port(proto="udp", family=socket.AF_INET):
    """A port nothing listens on right now (for servers, and for closed-port tests)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return sock.getsockname()[1]


class OpenVPNProcess:
    """One ``openvpn`` run from captures/ (where the test keys are), logging to a
    temporary file; ``start()`` returns once it says it is up."""

    role = "openvpn"

    def argv(self):
        raise NotImplementedError

    def start(self, timeout=20.0):
        if shutil.which("openvpn") is None:
            raise RuntimeError("openvpn is not installed: apt-get install -y openvpn")
        self.process = subprocess.Popen(self.argv(), cwd=CAPTURES, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Initialization Sequence Completed" in self.log_text():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited: {self.log_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.role} did not start in {timeout} s: {self.log_text()[-2000:]}")

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_count(self, pattern):
        return len(re.findall(pattern, self.log_text()))

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.log.parent, ignore_errors=True)


class OpenVPNServer(OpenVPNProcess):
    """``openvpn`` in server mode on 127.0.0.1 or ::1 with one wrapping."""

    role = "openvpn server"

    def __init__(self, proto="udp", family=4, wrapping="none", auth="SHA1", key_direction=0,
                 key=None, extra=()):
        self.proto, self.family, self.wrapping = proto, family, wrapping
        self.auth, self.key_direction, self.extra = auth, key_direction, list(extra)
        self.key = key or {"tls-auth": "keys/ta.key", "tls-crypt": "keys/tc.key",
                           "tls-crypt-v2": "keys/tcv2-server.key"}.get(wrapping)
        self.host = "127.0.0.1" if family == 4 else "::1"
        self.port = free_port(proto, socket.AF_INET if family == 4 else socket.AF_INET6)
        self.number = next(_counter)
        self.log = Path(tempfile.mkdtemp(prefix="ovpndiag-server-")) / "server.log"
        self.process = None

    def argv(self):
        proto = {"udp": f"udp{self.family}", "tcp": f"tcp{self.family}-server"}[self.proto]
        subnet = f"10.{100 + _TAG % 100}.{self.number % 250}.0"
        argv = ["openvpn", "--server", subnet, "255.255.255.0", "--topology", "subnet",
                "--local", self.host, "--port", str(self.port), "--proto", proto,
                "--dev", f"ovs{_TAG}n{self.number}", "--dev-type", "tun",
                "--ca", "keys/ca.crt", "--cert", "keys/server.crt", "--key", "keys/server.key",
                "--dh", "none", "--disable-dco", "--verb", "3", "--log", str(self.log)]
        if self.wrapping == "tls-auth":
            argv += ["--tls-auth", self.key] + ([] if self.key_direction is None else [str(self.key_direction)])
            argv += ["--auth", self.auth]
        elif self.wrapping in ("tls-crypt", "tls-crypt-v2"):
            argv += [f"--{self.wrapping}", self.key]
        return argv + self.extra


class ServerPool:
    """Starts each distinct server configuration once, on first use."""

    def __init__(self):
        self.servers = {}

    def get(self, **config):
        key = tuple(sorted(config.items()))
        if key not in self.servers:
            self.servers[key] = OpenVPNServer(**config).start()
        return self.servers[key]

    def stop_all(self):
        for server in self.servers.values():
            server.stop()


class GarbageUDPService:
    """Answers every datagram with bytes that are not OpenVPN."""

    def __init__(self, answer=b"hello, this is not OpenVPN\n"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                _, peer = self.sock.recvfrom(4096)
                self.sock.sendto(self.answer, peer)
            except OSError:
                return

    def close(self):
        self.sock.close()


class HTTPService:
    """A TCP service that speaks HTTP, like a web server on the VPN's port."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


class ReplayUDPService:
    """Answers every datagram with one fixed datagram: e.g. a real server reset
    captured earlier, which echoes somebody else's session id."""

    def __init__(self, answer: bytes):
        self.inner = GarbageUDPService(answer)
        self.port = self.inner.port

    def close(self):
        self.inner.close()


class DropFirstRelay:
    """A UDP relay to a real server that loses the first datagram it is sent,
    like a lossy link: the probe gets its answer only after a retry."""

    def __init__(self, target_host, target_port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.connect((target_host, target_port))
        self.client = None
        self.dropped = 0
        threading.Thread(target=self._forward, daemon=True).start()
        threading.Thread(target=self._backward, daemon=True).start()

    def _forward(self):
        while True:
            try:
                data, self.client = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.dropped == 0:
                self.dropped += 1
                continue
            self.upstream.send(data)

    def _backward(self):
        while True:
            try:
                data = self.upstream.recv(4096)
                self.sock.sendto(data, self.client)
            except OSError:
                return

    def close(self):
        self.sock.close()
        self.upstream.close()


class ForeignPortReplier:
    """Receives on one port and answers from another, as a spoofer or a
    misrouted NAT would: a probe must not take that for the server's answer."""

    def __init__(self, answer: bytes):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.answer, self.answered = answer, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                _, peer = self.sock.recvfrom(4096)
                self.other.sendto(self.answer, peer)
                self.answered += 1
            except OSError:
                return

    def close(self):
        self.sock.close()
        self.other.close()


class OpenVPNClient(OpenVPNProcess):
    """``openvpn`` as a client of an OpenVPNServer (same keys), with --ping 1 so
    data-channel packets flow once it is connected."""

    role = "openvpn client"

    def __init__(self, server: OpenVPNServer, extra=()):
        self.server = server
        self.number = next(_counter)
        self.log = Path(tempfile.mkdtemp(prefix="ovpndiag-client-")) / "client.log"
        self.extra = list(extra)
        self.process = None

    def argv(self):
        server = self.server
        proto = {"udp": f"udp{server.family}", "tcp": f"tcp{server.family}-client"}[server.proto]
        argv = ["openvpn", "--client", "--remote", server.host, str(server.port), "--proto", proto, "--nobind",
                "--dev", f"ovc{_TAG}n{self.number}", "--dev-type", "tun", "--ca", "keys/ca.crt",
                "--cert", "keys/client.crt", "--key", "keys/client.key", "--remote-cert-tls", "server",
                "--ping", "1", "--disable-dco", "--verb", "3", "--log", str(self.log)]
        if server.wrapping == "tls-auth":
            direction = None if server.key_direction is None else 1 - server.key_direction
            argv += ["--tls-auth", server.key] + ([] if direction is None else [str(direction)])
            argv += ["--auth", server.auth]
        elif server.wrapping == "tls-crypt":
            argv += ["--tls-crypt", server.key]
        elif server.wrapping == "tls-crypt-v2":
            argv += ["--tls-crypt-v2", "keys/tcv2-client.key"]
        return argv + self.extra
