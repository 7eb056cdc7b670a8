"""How the staged handshake (ovpndiag.client.Client) names each way a real
OpenVPN 2.6 server makes it fail.

Each test starts a real server on loopback that fails clients one way (the
fixtures of tests/servers.py, proven against the openvpn binary in
tests/test_failure_servers.py), runs the Client against it, and checks the
verdict (ovpndiag/verdicts.py's vocabulary), the stage that failed and the
evidence in the message; and, where the server can tell, that the server saw
the failure the same way (its log line). Where it proves something, a control
run with one thing changed shows that the failure comes from that thing.
"""

import json
import re
import subprocess
import sys
import time

import pytest

from captures import CAPTURES
from pki import get_pki
from servers import (AUTH_FAILED_REASON, AUTH_PASSWORD, AUTH_USER, P_CONTROL_V1, P_DATA_V1, P_DATA_V2,
                     LossyRelay, StopAfterResetRelay, StopRelay, auth_script_server, cipher_server, crl_server,
                     max_clients_server, pki_client, pki_server, tls13_server)

from ovpndiag import verdicts
from ovpndiag.client import STAGES, Client, HandshakeResult, HandshakeSettings
from ovpndiag.settings import probe_settings

# Failures that end in silence last as long as the budget: keep it short. Loopback
# answers in milliseconds, so 3 s leaves the client room to retransmit.
TIMEOUT = 3.0


class Target:
    """Where the client connects: a server, or a relay in front of one."""

    def __init__(self, host, port, proto="udp"):
        self.host, self.port, self.proto = host, port, proto


# The client's side of each wrapping of tests/servers.py (keys in captures/keys).
CLIENT_WRAPPING = {
    "none": {},
    "tls-auth": {"tls_auth": "keys/ta.key", "key_direction": "1"},
    "tls-crypt": {"tls_crypt": "keys/tc.key"},
    "tls-crypt-v2": {"tls_crypt_v2": "keys/tcv2-client.key"},
}


def handshake(target, stage="data", client="valid", timeout=TIMEOUT, wrapping="none",
              **options) -> HandshakeResult:
    """Runs the Client with the test PKI's CA and client certificate ``client`` against ``target``."""
    return make_client(target, stage, client, timeout, wrapping, **options).run(stage)


def make_client(target, stage="data", client="valid", timeout=TIMEOUT, wrapping="none", keys=None,
                **options) -> Client:
    """The Client ``handshake`` runs (``keys``: the wrapping's key files instead of the server's)."""
    pki = get_pki()
    keys = keys or {name: str(CAPTURES / path) if path.startswith("keys/") else path
                    for name, path in CLIENT_WRAPPING[wrapping].items()}
    probe = probe_settings(host=target.host, port=target.port, proto=target.proto, family=4, timeout=timeout,
                           retry_interval=0.5, **keys)
    settings = HandshakeSettings(probe=probe, ca=pki.ca, cert=pki.client[client], key=pki.client_key[client],
                                 stage=stage, **options)
    return Client(settings)


def local_ports(client) -> set:
    """The client's source ports: one per session it opened (a second session has its own)."""
    return {local[1] for _, local, _, _, _, sent in client.exchange if sent}


def assert_fails(result, verdict, stage, *evidence):
    """The handshake went through every stage before ``stage``, failed there with ``verdict``,
    and the message holds each piece of ``evidence``."""
    summary = f"{result.verdict}: {result.message} | " + " | ".join(
        f"{s.name} {'ok' if s.ok else 'FAIL'} {s.detail}" for s in result.stages)
    assert result.verdict == verdict, summary
    assert [s.name for s in result.stages] == list(STAGES[:STAGES.index(stage) + 1]), summary
    assert all(s.ok for s in result.stages[:-1]) and not result.stages[-1].ok, summary
    assert verdicts.get(verdict).stage in (stage, None), "the vocabulary names another stage"
    assert not result.ok and verdicts.state_of(verdict) != verdicts.OK_STATE
    for text in evidence:
        assert text in result.message, summary


@pytest.fixture
def started():
    """Starts servers (and relays, clients) for one test and stops them all after it."""
    running = []

    def start(thing):
        running.append(thing)
        return thing.start() if hasattr(thing, "start") else thing  # (relays run from creation)

    yield start
    for thing in reversed(running):
        (thing.close if hasattr(thing, "close") else thing.stop)()


def server_target(server):
    return Target(server.host, server.port, server.proto)


# --- the server's certificate, refused by us ---------------------------------------------------

def test_control_the_same_client_connects_to_a_valid_server(started):
    """The client set-up every failure below starts from works: a failure is the server's doing."""
    server = started(pki_server("valid"))
    result = handshake(server_target(server), verify_x509_name=("server", "name"), remote_cert_tls="server")
    assert result.verdict == "ok", result.message
    assert [s.name for s in result.stages] == list(STAGES) and all(s.ok for s in result.stages)
    assert result.server_certificate["verified"] is True
    assert result.server_certificate["subject"] == "O=ovpndiag throwaway test PKI, CN=server"
    assert server.wait_for(r"Peer Connection Initiated", 2)
    assert result.exit_sent == "cc-exit" and server.wait_for(r"exit message received by peer", 2)


def test_untrusted_server_ca(started):
    server = started(pki_server("other-ca"))
    result = handshake(server_target(server))
    assert_fails(result, "server-certificate-rejected", "tls", "unable to get local issuer certificate")
    assert result.server_certificate["verified"] is False
    assert result.server_certificate["issuer"] == "O=ovpndiag throwaway test PKI, CN=ovpndiag throwaway untrusted CA"
    assert "Peer Connection Initiated" not in server.log_text()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_expired_server_certificate(started, proto):
    from ovpndiag.handshake_check import judge

    server = started(pki_server("expired", proto=proto))
    result = handshake(server_target(server))
    assert_fails(result, "server-certificate-rejected", "tls", "certificate has expired")
    assert result.server_certificate["days_left"] == -2 and result.server_certificate["verified"] is False
    judgement = judge(result)
    assert judgement.state == verdicts.CRITICAL_STATE and "expired" in judgement.message


def test_server_certificate_not_yet_valid(started):
    server = started(pki_server("not-yet-valid"))
    result = handshake(server_target(server))
    assert_fails(result, "server-certificate-rejected", "tls", "certificate is not yet valid")
    assert result.server_certificate["not_yet_valid"] is True


def test_verify_x509_name_mismatch(started):
    server = started(pki_server("other-cn"))
    target = server_target(server)
    result = handshake(target, verify_x509_name=("server", "name"))
    assert_fails(result, "server-certificate-rejected", "tls", "verify-x509-name", "other-server")
    control = handshake(target, stage="tls", verify_x509_name=("other-server", "name"))
    assert control.verdict == "ok", control.message


def test_remote_cert_tls_server_against_a_certificate_without_server_auth(started):
    server = started(pki_server("no-eku"))
    target = server_target(server)
    result = handshake(target, remote_cert_tls="server")
    assert_fails(result, "server-certificate-rejected", "tls", "remote-cert-tls server")
    control = handshake(target, stage="tls")  # without the option the same certificate passes
    assert control.verdict == "ok", control.message


# --- our certificate, refused by the server --------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_client_certificate_from_another_ca(started, proto):
    server = started(pki_server("valid", proto=proto))
    result = handshake(server_target(server), client="other-ca")
    assert_fails(result, "client-certificate-rejected", "tls", "after our certificate", "refused our certificate")
    facts = result.stage("tls").facts
    assert facts["server_tls_bytes"] > 0 and facts["unacknowledged"], facts  # its flight came, ours was not ACKed
    assert server.wait_for(r"VERIFY ERROR: depth=0, error=unable to get local issuer certificate: "
                           r"O=ovpndiag throwaway test PKI, CN=client", 1)
    assert result.server_certificate["verified"] is True  # we accepted theirs: the refusal is theirs


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_revoked_client_certificate(started, proto):
    server = started(crl_server(proto=proto))
    target = server_target(server)
    result = handshake(target, client="revoked")
    assert_fails(result, "client-certificate-rejected", "tls", "after our certificate", "refused our certificate")
    assert server.wait_for(r"VERIFY ERROR: depth=0, error=certificate revoked: "
                           r"O=ovpndiag throwaway test PKI, CN=revoked-client", 1)
    control = handshake(target, stage="tls")  # a certificate the CRL does not list
    assert control.verdict == "ok", control.message


# --- TLS itself --------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tls_version_mismatch(started, proto):
    server = started(tls13_server(proto=proto))
    target = server_target(server)
    result = handshake(target, tls_version_max="1.2")
    assert_fails(result, "client-hello-rejected", "tls", "after our ClientHello", "no common TLS version")
    assert result.stage("tls").facts["server_tls_bytes"] == 0 and result.server_certificate is None
    assert server.wait_for(r"TLS error: Unsupported protocol", 1)
    control = handshake(target, stage="tls")
    assert control.verdict == "ok" and control.tls["version"] == "TLSv1.3", control.message


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tls_version_mismatch_is_proven_by_a_second_session(started, proto):
    """Silence after our ClientHello is a refusal or a full server: a second session offering every
    TLS version and suite is answered, so it was our TLS version - and that session, ended by our
    alert at once, leaves nothing on the server."""
    server = started(tls13_server(proto=proto))
    client = make_client(server_target(server), tls_version_max="1.2")
    result = client.run("data")
    assert_fails(result, "client-hello-rejected", "tls", "after our ClientHello",
                 "but answered a second session's ClientHello offering TLS 1.0-1.3 and every cipher suite "
                 "(TLSv1.3 TLS_AES_256_GCM_SHA384): proven, no common TLS version",
                 "above our maximum, TLS 1.2")
    widest = result.stage("tls").facts["widest_hello"]
    assert widest["reset_answered"] and widest["answered"] and widest["version"] == "TLSv1.3", widest
    ours = client.exchange[0][1][1]  # (our first packet's source port)
    (second,) = local_ports(client) - {ours}
    # the server refused our ClientHello for its version, and took the second session's, which our alert ended
    assert server.wait_for(rf"127.0.0.1:{ours} TLS error: Unsupported protocol", 1)
    assert server.wait_for(rf"127.0.0.1:{second} Received fatal SSL alert: unknown CA", 1)
    assert server.wait_for(rf"127.0.0.1:{second} SIGUSR1\[soft,tls-error\] received, client-instance restarting", 1)


@pytest.mark.parametrize("wrapping", ["tls-auth", "tls-crypt", "tls-crypt-v2"])
def test_tls_version_mismatch_under_a_wrapping(started, wrapping):
    """Silence after the ClientHello, then a fresh reset that must be wrapped as the first was,
    or a live server looks stopped."""
    server = started(tls13_server(wrapping=wrapping, key_direction=0))
    result = handshake(server_target(server), wrapping=wrapping, tls_version_max="1.2")
    assert_fails(result, "client-hello-rejected", "tls", "after our ClientHello", "no common TLS version")
    assert server.wait_for(r"TLS error: Unsupported protocol", 1)


# --- after TLS: credentials and options -------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_rejected_username_and_password(started, proto):
    server = started(auth_script_server(proto=proto))
    target = server_target(server)
    wrong = "wrong " + AUTH_PASSWORD
    result = handshake(target, auth_user_pass=(AUTH_USER, wrong))
    # AUTH_FAILED answers PUSH_REQUEST: key-method 2 (auth) passed, push is what fails
    assert_fails(result, "auth-failed", "push", "AUTH_FAILED", AUTH_FAILED_REASON)
    assert server.wait_for(r"Auth Username/Password verification failed", 1)
    assert wrong not in json.dumps(result.to_dict()) and wrong not in result.message
    control = handshake(target, stage="push", auth_user_pass=(AUTH_USER, AUTH_PASSWORD))
    assert control.verdict == "ok", control.message


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_no_shared_data_cipher(started, proto):
    server = started(cipher_server("AES-128-GCM", proto=proto))
    result = handshake(server_target(server), data_ciphers=["CHACHA20-POLY1305"])
    assert_fails(result, "no-shared-cipher", "push",
                 "AUTH_FAILED", "Data channel cipher negotiation failed (no shared cipher)")
    assert server.wait_for(r"No common cipher between server and client. Server data-ciphers: 'AES-128-GCM', "
                           r"client supported ciphers 'CHACHA20-POLY1305'", 1)


# --- the server's state ----------------------------------------------------------------------

def test_max_clients_reached_over_udp(started):
    """A full 2.6 server answers the reset (statelessly) and drops the ClientHello: on the wire a
    refused ClientHello. A second session offering every TLS version and suite is dropped too
    (while a TLS mismatch gets it answered: the test above), so the server is full."""
    server = started(max_clients_server())
    started(pki_client(server))  # the one client it takes
    client = make_client(server_target(server))
    begun = time.monotonic()
    result = client.run("data")
    took = time.monotonic() - begun
    assert_fails(result, "max-clients", "tls", "after our ClientHello",
                 "dropped a second session's ClientHello offering TLS 1.0-1.3 and every cipher suite too, though "
                 "it answered that session's reset", "max-clients reached")
    facts = result.stage("tls").facts
    assert facts["server_tls_bytes"] == 0 and facts["widest_hello"] == {
        "reset_answered": True, "answered": False, "session_id": facts["widest_hello"]["session_id"]}, facts
    assert took < TIMEOUT + 1, f"{took:.1f} s: the budget is {TIMEOUT} s"
    # both sessions reached the server, and both were refused as one client too many
    ports = local_ports(client)
    assert len(ports) == 2
    for port in ports:
        assert server.wait_for(rf"127.0.0.1:{port} MULTI: new incoming connection would exceed maximum number of "
                               rf"clients \(1\)", 1)


def test_max_clients_reached_over_tcp(started):
    """Over TCP a full server accepts the connection and drops it before any answer: a FIN, or an
    RST when our reset was still unread. A second connection that sends nothing is closed at once
    too: the server refused it for being one too many, not for anything we sent."""
    server = started(max_clients_server(proto="tcp"))
    started(pki_client(server))  # the one client it takes
    result = handshake(server_target(server))
    assert_fails(result, "max-clients", "reset", f"127.0.0.1:{server.port}/tcp closed the connection",
                 "closes a new idle connection at once too", "max-clients reached")
    assert result.stage("reset").facts["idle_connection_closed_after"] < 0.3
    assert server.wait_for(r"(?s)(new incoming connection would exceed maximum number of clients \(1\).*){2}", 1)


def test_a_wrong_tls_auth_key_over_tcp_is_not_max_clients(started):
    """A server with room closes our connection too when our reset does not verify, but only after
    reading it: an idle connection stays open, so the client keeps the closed connection."""
    server = started(pki_server("valid", proto="tcp", wrapping="tls-auth"))
    result = handshake(server_target(server), keys={"tls_auth": str(CAPTURES / "keys/tc.key"), "key_direction": "1"})
    assert result.verdict in ("connection-closed", "connection-reset"), result.message
    assert_fails(result, result.verdict, "reset", f"127.0.0.1:{server.port}")
    assert server.wait_for(r"packet HMAC authentication failed", 1)
    # the idle connection we opened to ask was closed by us, and the server dropped its instance at once
    assert server.wait_for(r"SIGUSR1\[soft,connection-reset\] received, client-instance restarting", 1)


@pytest.mark.parametrize("wrapping", ["none", "tls-crypt-v2"])
def test_server_stopped_mid_handshake(started, wrapping):
    server = started(pki_server("valid", wrapping=wrapping))
    relay = started(StopAfterResetRelay(server))
    begun = time.monotonic()
    result = handshake(Target(relay.host, relay.port), wrapping=wrapping)
    took = time.monotonic() - begun
    assert relay.stopped and relay.passed["down"] == 1  # its reset came through, then nothing
    assert_fails(result, "server-stopped", "tls", "stopped answering", "a new reset is not answered")
    assert took < TIMEOUT + 1.5, f"{took:.1f} s: the budget is {TIMEOUT} s"


# The server's control packets on loopback with this PKI (TLS 1.3, EC P-256): 1st its first TLS flight
# packet, 2nd the rest of that flight, 3rd its ACK + key-method 2 message, 4th the one before PUSH_REPLY.
@pytest.mark.parametrize("nth, stage, evidence", [
    (1, "tls", "half-way through TLS"),  # part of its flight came
    (2, "tls", "a new reset is not answered"),  # silent after our certificate, but dead, not refusing
    (3, "auth", "after our key-method 2 message"),
    (4, "push", "after our PUSH_REQUEST"),  # its key-method 2 came, then nothing: not a push-timeout
])
def test_server_stopped_later_in_the_handshake(started, nth, stage, evidence):
    server = started(pki_server("valid"))
    relay = started(StopRelay(server, P_CONTROL_V1, nth))
    result = handshake(Target(relay.host, relay.port))
    assert relay.stopped
    assert_fails(result, "server-stopped", stage, "stopped answering", evidence)


def test_twenty_percent_loss_each_way_still_completes(started):
    server = started(pki_server("valid", extra=["--tls-timeout", "1"]))
    relay = started(LossyRelay(server.host, server.port, loss=0.2, seed=11))
    result = handshake(Target(relay.host, relay.port), timeout=15.0)
    assert result.verdict == "ok", f"{result.message} dropped {relay.dropped}"
    assert [s.name for s in result.stages] == list(STAGES) and all(s.ok for s in result.stages)
    lost_control = {(d, op) for d, op, passed in relay.history if not passed and op not in (P_DATA_V1, P_DATA_V2)}
    assert {d for d, _ in lost_control} == {"up", "down"}, relay.history  # the handshake itself lost packets
    assert result.data["received"] >= 1
    # and it said goodbye: the server saw our exit through the loss (or will, on its retransmission)
    assert server.wait_for(r"exit message received by peer|SIGTERM\[soft,remote-exit\]", 3)


# --- the certificate's end, as monitoring sees it ---------------------------------------------

def ovpndiag(command, target, *options):
    """``ovpndiag COMMAND HOST ...`` with the test PKI, as a user runs it: (exit status, stdout)."""
    pki = get_pki()
    argv = [sys.executable, "-m", "ovpndiag", command, target.host, "-p", str(target.port), "-4",
            "-t", str(TIMEOUT), "--ca", pki.ca, "--cert", pki.client["valid"], "--key", pki.client_key["valid"],
            *options]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT + 15)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def check_stage(target, *options):
    """``ovpndiag check --stage data`` as a monitoring system runs it: (exit status, first line)."""
    status, output = ovpndiag("check", target, "--stage", "data", *options)
    return status, output.splitlines()[0] if output else ""


def test_server_certificate_ending_within_the_warning_window(started):
    from ovpndiag.handshake_check import judge

    server = started(pki_server("ends-20d"))
    target = server_target(server)
    result = handshake(target)
    assert result.verdict == "ok", result.message  # the handshake itself works
    assert result.server_certificate["days_left"] == 20
    judgement = judge(result, cert_warning=30, cert_critical=7)
    assert (judgement.state, judgement.verdict) == (verdicts.WARNING_STATE, "certificate-expiring")
    assert "20 days" in judgement.message

    status, line = check_stage(target)
    assert status == 1 and line.startswith("OPENVPN WARNING - "), line
    assert "20 days" in line and re.search(r"cert_days=20;30:;7:", line), line
    status, line = check_stage(target, "--cert-warning", "10")  # outside a shorter window: OK
    assert status == 0 and line.startswith("OPENVPN OK - "), line

    status, output = ovpndiag("handshake", target, "--json")
    report = json.loads(output)
    assert status == 1 and (report["state"], report["verdict"]) == ("WARNING", "certificate-expiring"), report
    assert report["server_certificate"]["days_left"] == 20 and [s["ok"] for s in report["stages"]] == [True] * 5


def test_server_certificate_ending_within_the_critical_window(started):
    server = started(pki_server("ends-5d"))
    status, line = check_stage(server_target(server))
    assert status == 2 and line.startswith("OPENVPN CRITICAL - "), line
    assert "5 days" in line and re.search(r"cert_days=5;30:;7:", line), line
