"""-t is the probe's whole time budget, and a reply is credited to the reset it
answers: real OpenVPN 2.6 servers behind relays that hold their answers back,
as a slow or congested path does."""

import re
import socket
import subprocess
import sys
import threading
import time

from ovpndiag import probe as verdicts
from ovpndiag.probe import probe
from ovpndiag.settings import probe_settings

DELAY = 2.5  # seconds each answer of the server is held back


class DelayingUDPRelay:
    """Passes datagrams to a real server at once and its answers back DELAY seconds later."""

    def __init__(self, host, port, delay=DELAY):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.connect((host, port))
        self.delay, self.client, self.forwarded = delay, None, 0
        threading.Thread(target=self._forward, daemon=True).start()
        threading.Thread(target=self._backward, daemon=True).start()

    def _forward(self):
        while True:
            try:
                data, self.client = self.sock.recvfrom(4096)
                self.upstream.send(data)
                self.forwarded += 1
            except OSError:
                return

    def _backward(self):
        while True:
            try:
                data = self.upstream.recv(4096)
            except OSError:
                return
            threading.Timer(self.delay, self._answer, (data, self.client)).start()

    def _answer(self, data, client):
        try:
            self.sock.sendto(data, client)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        self.upstream.close()


class DelayingTCPProxy:
    """A TCP proxy to a real server whose answers reach the client DELAY seconds late."""

    def __init__(self, host, port, delay=DELAY):
        self.target, self.delay = (host, port), delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pipe(source, sink, delay):
        while True:
            try:
                data = source.recv(4096)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                time.sleep(delay)
                sink.sendall(data)
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_a_late_udp_answer_is_credited_to_the_reset_it_answers(servers):
    """Resets at 0, 1 and 2 s; the first one's answer arrives at 2.5 s. It is that
    reset's answer (each attempt is its own session), 2.5 s after it, not 0.5 s
    after the latest retry."""
    server = servers.get(proto="udp")
    relay = DelayingUDPRelay(server.host, server.port)
    try:
        result = probe(probe_settings(host="127.0.0.1", port=relay.port, timeout=6, retries=2, retry_interval=1))
        assert result.verdict == verdicts.OK, result.message
        assert [a.outcome for a in result.attempts] == ["reply", "unanswered", "unanswered"]
        assert DELAY - 0.1 < result.rtt < DELAY + 0.5 and result.attempts[0].rtt == result.rtt
        assert len({a.session_id for a in result.attempts}) == 3
        assert not result.retried  # the first reset was answered: --warn-on-retry has nothing to say
        assert "answered in 2" in result.message  # e.g. "answered in 2503.1 ms"
    finally:
        relay.close()


def test_the_last_udp_attempt_waits_for_the_rest_of_the_budget(servers):
    server = servers.get(proto="udp")
    relay = DelayingUDPRelay(server.host, server.port)
    try:
        started = time.monotonic()
        result = probe(probe_settings(host="127.0.0.1", port=relay.port, timeout=5, retries=0, retry_interval=1))
        assert result.verdict == verdicts.OK and DELAY - 0.1 < result.rtt < DELAY + 0.5, result.message
        assert time.monotonic() - started < DELAY + 1  # and it stops at the answer
    finally:
        relay.close()


def test_a_tcp_probe_waits_for_the_whole_budget(servers):
    server = servers.get(proto="tcp")
    proxy = DelayingTCPProxy(server.host, server.port)
    try:
        result = probe(probe_settings(host="127.0.0.1", port=proxy.port, proto="tcp", timeout=5,
                                      retry_interval=1))
        assert result.verdict == verdicts.OK, result.message
        assert DELAY - 0.1 < result.rtt < DELAY + 0.5
    finally:
        proxy.close()


def test_check_of_a_slow_tcp_server_is_ok_with_its_true_time(servers):
    """The case as reported: answered after 2.5 s, -t 10 - OK, not CRITICAL."""
    server = servers.get(proto="tcp")
    proxy = DelayingTCPProxy(server.host, server.port)
    try:
        result = subprocess.run([sys.executable, "-m", "ovpndiag", "check", "127.0.0.1", "-p", str(proxy.port),
                                 "--proto", "tcp", "-t", "10"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        seconds = float(re.search(r"time=([0-9.]+)s", result.stdout).group(1))
        assert DELAY - 0.1 < seconds < DELAY + 0.5
    finally:
        proxy.close()


def test_a_tcp_server_that_accepts_and_stays_silent_is_no_reply_after_the_budget():
    """Connected, then nothing: no reply (not "no TCP connection"), after all of -t."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        started = time.monotonic()
        result = probe(probe_settings(host="127.0.0.1", port=listener.getsockname()[1], proto="tcp", timeout=1.5,
                                      retry_interval=0.5))
        elapsed = time.monotonic() - started
        assert result.verdict == verdicts.NO_REPLY and "connection stayed open" in result.message
        assert 1.4 < elapsed < 2.0
    finally:
        listener.close()


def test_try_keys_over_tcp_waits_for_a_slow_server(servers):
    """Wrong combinations are closed at once; the right one is answered 2.5 s late and
    must still be found (each combination waited only --retry-interval)."""
    import json

    from captures import key_path

    server = servers.get(proto="tcp", wrapping="tls-auth", auth="SHA1")
    proxy = DelayingTCPProxy(server.host, server.port)
    try:
        result = subprocess.run([sys.executable, "-m", "ovpndiag", "probe", "127.0.0.1", "-p", str(proxy.port),
                                 "--proto", "tcp", "--tls-auth", str(key_path("keys/ta.key")), "--try-keys",
                                 "-t", "60", "--json"], capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["working"] == ["tls-auth SHA1, key-direction 1"]
    finally:
        proxy.close()


def test_try_keys_last_udp_round_listens_for_the_rest_of_the_budget(servers):
    import json

    from captures import key_path

    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    relay = DelayingUDPRelay(server.host, server.port)
    try:
        result = subprocess.run([sys.executable, "-m", "ovpndiag", "probe", "127.0.0.1", "-p", str(relay.port),
                                 "--tls-auth", str(key_path("keys/ta.key")), "--try-keys", "--retries", "0",
                                 "--retry-interval", "1", "-t", "5", "--json"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["working"] == ["tls-auth SHA1, key-direction 1"]
    finally:
        relay.close()
