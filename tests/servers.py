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
        self.launch()
        if not self.wait_for("Initialization Sequence Completed", timeout):
            raise RuntimeError(f"{self.role} did not start in {timeout} s: {self.log_text()[-2000:]}")
        return self

    def launch(self):
        """Starts the process without waiting for it to be up (e.g. a client expected to fail)."""
        if shutil.which("openvpn") is None:
            raise RuntimeError("openvpn is not installed: apt-get install -y openvpn")
        self.process = subprocess.Popen(self.argv(), cwd=CAPTURES, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        return self

    def wait_for(self, pattern, timeout=10.0):
        """True once the log matches ``pattern`` (a regular expression); False after ``timeout``
        seconds. Raises if the process exits first without it."""
        deadline = time.monotonic() + timeout
        while True:
            if re.search(pattern, self.log_text()):
                return True
            if self.process.poll() is not None:
                if re.search(pattern, self.log_text()):  # written just before it exited
                    return True
                raise RuntimeError(f"{self.role} exited: {self.log_text()[-2000:]}")
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

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
                 key=None, extra=(), ca="keys/ca.crt", cert="keys/server.crt", cert_key="keys/server.key"):
        self.proto, self.family, self.wrapping = proto, family, wrapping
        self.ca, self.cert, self.cert_key = ca, cert, cert_key  # the server's PKI (e.g. from tests/pki.py)
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
                "--ca", self.ca, "--cert", self.cert, "--key", self.cert_key,
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

    def __init__(self, server: OpenVPNServer, extra=(), ca="keys/ca.crt", cert="keys/client.crt",
                 cert_key="keys/client.key"):
        self.server = server
        self.ca, self.cert, self.cert_key = ca, cert, cert_key
        self.number = next(_counter)
        self.log = Path(tempfile.mkdtemp(prefix="ovpndiag-client-")) / "client.log"
        self.extra = list(extra)
        self.process = None

    def argv(self):
        server = self.server
        proto = {"udp": f"udp{server.family}", "tcp": f"tcp{server.family}-client"}[server.proto]
        argv = ["openvpn", "--client", "--remote", server.host, str(server.port), "--proto", proto, "--nobind",
                "--dev", f"ovc{_TAG}n{self.number}", "--dev-type", "tun", "--ca", self.ca,
                "--cert", self.cert, "--key", self.cert_key, "--remote-cert-tls", "server",
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


# --- Failure scenarios for the staged handshake (issue 11) --------------------------------------
# Servers on the throwaway PKI of tests/pki.py, each failing a client one way; the relays below put
# a lossy link or a server that stops in the middle. protocol.md ("How real handshakes fail on the
# wire") says what each leaves on the wire; tests/test_failure_servers.py proves each against the
# openvpn binary as a client.

AUTH_USER, AUTH_PASSWORD = "alice", "correct horse"  # the one account auth_script_server accepts
AUTH_FAILED_REASON = "unknown user or wrong password"  # what its script tells the client


def pki_server(cert="valid", extra=(), **config) -> OpenVPNServer:
    """A server (not started) with the test PKI's CA and its server certificate ``cert``
    (a name from tests/pki.py: valid, expired, not-yet-valid, ends-5d, no-eku, other-cn, ...)."""
    from pki import get_pki

    pki = get_pki()
    return OpenVPNServer(ca=pki.ca, cert=pki.server[cert], cert_key=pki.server_key[cert], extra=extra, **config)


def crl_server(**config) -> OpenVPNServer:
    """Checks client certificates against the test CRL, which revokes pki.client["revoked"]."""
    from pki import get_pki

    return pki_server(extra=["--crl-verify", get_pki().crl], **config)


def tls13_server(**config) -> OpenVPNServer:
    """Refuses TLS below 1.3 (a client capped at 1.2 cannot connect)."""
    return pki_server(extra=["--tls-version-min", "1.3"], **config)


def cipher_server(ciphers="AES-128-GCM", **config) -> OpenVPNServer:
    """Offers only ``ciphers`` for the data channel (and no fallback), so a client without one of
    them gets AUTH_FAILED,Data channel cipher negotiation failed (no shared cipher)."""
    return pki_server(extra=["--data-ciphers", ciphers], **config)


def max_clients_server(**config) -> OpenVPNServer:
    """Takes one client only: connect an OpenVPNClient first to fill it."""
    return pki_server(extra=["--max-clients", "1"], **config)


def auth_script_server(**config) -> OpenVPNServer:
    """Checks username/password with an --auth-user-pass-verify script (via-file) that accepts
    AUTH_USER/AUTH_PASSWORD only, and gives AUTH_FAILED_REASON to the others (2.6 sends the
    reason written to $auth_failed_reason_file as AUTH_FAILED,reason)."""
    import shlex

    server = pki_server(**config)
    script = server.log.parent / "verify.sh"  # removed with the log by stop()
    script.write_text(
        "#!/bin/sh\n"
        "# $1: a file with the username on line 1 and the password on line 2\n"
        "{ IFS= read -r user; IFS= read -r password; } < \"$1\"\n"
        f"if [ \"$user\" = {shlex.quote(AUTH_USER)} ] && [ \"$password\" = {shlex.quote(AUTH_PASSWORD)} ]; then\n"
        "    exit 0\n"
        "fi\n"
        "[ -n \"$auth_failed_reason_file\" ] && "
        f"printf '%s' {shlex.quote(AUTH_FAILED_REASON)} > \"$auth_failed_reason_file\"\n"
        "exit 1\n")
    script.chmod(0o700)
    server.extra += ["--script-security", "2", "--auth-user-pass-verify", str(script), "via-file"]
    return server


def pki_client(server, client="valid", extra=(), **kwargs) -> "OpenVPNClient":
    """The openvpn binary as a client of ``server`` with the test PKI's CA and client
    certificate ``client`` (valid, other-ca, revoked)."""
    from pki import get_pki

    pki = get_pki()
    return OpenVPNClient(server, extra=extra, ca=kwargs.pop("ca", pki.ca), cert=pki.client[client],
                         cert_key=pki.client_key[client], **kwargs)


class UDPRelay:
    """A UDP relay on 127.0.0.1 in front of a loopback server, for one client at a time.
    ``passes(direction, data)`` decides each datagram ("up": client -> server, "down": server ->
    client); the counters say what was passed and dropped each way. Close it after use."""

    def __init__(self, target_host, target_port):
        if target_host not in ("127.0.0.1", "localhost"):
            raise ValueError("the test relays only relay to loopback")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self.sock.getsockname()[1]
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.connect((target_host, target_port))
        self.client = None
        self.passed = {"up": 0, "down": 0}
        self.dropped = {"up": 0, "down": 0}
        self.history = []  # (direction, opcode, passed) of every datagram, in order
        self.closed = False
        self.threads = [threading.Thread(target=self._pump, args=(d,), daemon=True) for d in ("up", "down")]
        for thread in self.threads:
            thread.start()

    def passes(self, direction, data) -> bool:
        return True

    def _pump(self, direction):
        source = self.sock if direction == "up" else self.upstream
        source.settimeout(0.2)  # so the thread notices close() soon
        while not self.closed:
            try:
                if direction == "up":
                    data, self.client = source.recvfrom(65535)
                else:
                    data = source.recv(65535)
            except socket.timeout:
                continue
            except OSError:  # closed, or ICMP port unreachable from a peer that is gone
                if self.closed:
                    return
                continue
            passed = self.passes(direction, data)
            self.history.append((direction, data[0] >> 3 if data else None, passed))
            if not passed:
                self.dropped[direction] += 1
                continue
            self.passed[direction] += 1
            try:
                if direction == "up":
                    self.upstream.send(data)
                elif self.client is not None:
                    self.sock.sendto(data, self.client)
            except OSError:
                pass

    def close(self):
        self.closed = True
        for thread in self.threads:
            thread.join(2)
        self.sock.close()
        self.upstream.close()


class LossyRelay(UDPRelay):
    """Drops ``loss`` of the datagrams each way: one in every round(1/loss) (every 5 for 20%),
    at a place in each run of that many chosen by a seeded random generator. So the share is
    exact and the same whatever the timing, the same seed drops the same places, at most two
    go in a row (the end of one run and the start of the next) - a client that retransmits gets
    through in bounded time - and each direction loses one of its first packets, which are the
    handshake's control packets."""

    def __init__(self, target_host, target_port, loss=0.2, seed=11):
        import random

        self.run_length = max(2, round(1 / loss))
        self.random = {"up": random.Random(seed), "down": random.Random(seed + 1)}
        self.count = {"up": 0, "down": 0}
        self.victim = {"up": None, "down": None}
        super().__init__(target_host, target_port)

    def passes(self, direction, data):
        index = self.count[direction]
        self.count[direction] += 1
        if index % self.run_length == 0:
            self.victim[direction] = index + self.random[direction].randrange(self.run_length)
        return index != self.victim[direction]


P_CONTROL_HARD_RESET_SERVER_V2, P_CONTROL_V1, P_DATA_V1, P_DATA_V2 = 8, 4, 6, 9


class StopRelay(UDPRelay):
    """Stops the server (SIGSTOP) as the ``nth`` packet of opcode ``opcode`` it sends goes by -
    that packet is forwarded, nothing after it - as a server that hangs mid-handshake. Opcodes
    are read from the first byte, in the clear under every wrapping. close() lets the server go
    on (SIGCONT)."""

    def __init__(self, server: OpenVPNServer, opcode: int, nth: int = 1):
        self.server, self.opcode, self.nth = server, opcode, nth
        self.seen, self.stopped = 0, False
        super().__init__(server.host, server.port)

    def passes(self, direction, data):
        if self.stopped:
            return direction == "up"  # (nothing comes down from a stopped server anyway)
        if direction == "down" and data and data[0] >> 3 == self.opcode:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(self.server.pid, signal.SIGSTOP)
                self.stopped = True
        return True

    def close(self):
        if self.stopped and self.server.process.poll() is None:
            os.kill(self.server.pid, signal.SIGCONT)
        super().close()


class StopAfterResetRelay(StopRelay):
    """The server stops right after answering the reset: the client's ClientHello meets silence."""

    def __init__(self, server: OpenVPNServer):
        super().__init__(server, P_CONTROL_HARD_RESET_SERVER_V2)
