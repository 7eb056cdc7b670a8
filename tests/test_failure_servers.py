"""The failure fixtures of tests/servers.py and tests/pki.py, proven against the openvpn 2.6
binary as a client: each server fails a real client the way its name says, with the log line
an administrator would see. If one stopped failing (or failed another way), the handshake
tests built on it would prove nothing."""

import datetime
import time

import pytest

from pki import get_pki
from servers import (AUTH_FAILED_REASON, AUTH_PASSWORD, AUTH_USER, LossyRelay, StopAfterResetRelay,
                     auth_script_server, cipher_server, crl_server, max_clients_server, pki_client,
                     pki_server, tls13_server)


class Relayed:
    """What OpenVPNClient needs to know of a server, pointing at a relay in front of it."""

    def __init__(self, server, relay):
        self.host, self.port = relay.host, relay.port
        self.proto, self.family, self.wrapping = server.proto, server.family, server.wrapping


def run_client(server, client_log, server_log=None, timeout=8.0, **client):
    """Starts ``server``, runs a real client against it until its log matches ``client_log``
    (and the server's ``server_log``); returns (client log, server log)."""
    server.start()
    peer = pki_client(server, **client).launch()
    try:
        assert peer.wait_for(client_log, timeout), peer.log_text()[-1500:]
        if server_log:
            assert server.wait_for(server_log, timeout), server.log_text()[-1500:]
        return peer.log_text(), server.log_text()
    finally:
        peer.stop()
        server.stop()


@pytest.mark.parametrize("cert, extra, refusal", [
    ("expired", [], r"VERIFY ERROR: depth=0, error=certificate has expired"),
    ("not-yet-valid", [], r"VERIFY ERROR: depth=0, error=certificate is not yet valid"),
    ("other-ca", [], r"VERIFY ERROR: depth=0, error=unable to get local issuer certificate"),
    ("no-eku", [], r"Certificate does not have extended key usage extension\n.*VERIFY EKU ERROR"),
    # OpenSSL's own purpose check refuses a clientAuth-only certificate before remote-cert-tls looks
    ("client-eku", [], r"VERIFY ERROR: depth=0, error=unsuitable certificate purpose"),
    ("other-cn", ["--verify-x509-name", "server", "name"],
     r"VERIFY X509NAME ERROR: O=ovpndiag throwaway test PKI, CN=other-server, must be server"),
])
def test_client_refuses_server_certificate(cert, extra, refusal):
    client_log, _ = run_client(pki_server(cert), refusal, extra=extra)
    assert "TLS Error: TLS handshake failed" in client_log


@pytest.mark.parametrize("cert", ["valid", "ends-5d", "ends-20d"])
def test_client_accepts_server_certificate(cert):
    client_log, _ = run_client(pki_server(cert), r"Initialization Sequence Completed",
                               extra=["--verify-x509-name", "server", "name"])
    assert "VERIFY OK: depth=0, O=ovpndiag throwaway test PKI, CN=server" in client_log


def test_server_certificates_end_when_named():
    from cryptography import x509

    pki = get_pki()
    now = datetime.datetime.now(datetime.timezone.utc)
    days = {}
    for name, path in pki.server.items():
        cert = x509.load_pem_x509_certificate(open(path, "rb").read())
        assert cert.not_valid_after_utc == pki.server_not_after[name]
        days[name] = (cert.not_valid_after_utc - now).days
    assert days["ends-5d"] == 5 and days["ends-20d"] == 20 and days["expired"] == -2 and days["valid"] >= 364


@pytest.mark.parametrize("factory, client, refusal", [
    (pki_server, "other-ca", r"VERIFY ERROR: depth=0, error=unable to get local issuer certificate: "
                             r"O=ovpndiag throwaway test PKI, CN=client"),
    (crl_server, "revoked", r"VERIFY ERROR: depth=0, error=certificate revoked: "
                            r"O=ovpndiag throwaway test PKI, CN=revoked-client"),
])
def test_server_refuses_client_certificate(factory, client, refusal):
    _, server_log = run_client(factory(), r"TLS: Initial packet from", refusal, client=client)
    assert "TLS Error: TLS handshake failed" in server_log


def test_crl_server_accepts_a_valid_client():
    _, server_log = run_client(crl_server(), r"Initialization Sequence Completed")
    assert "CRL: loaded 1 CRLs from file" in server_log and "VERIFY ERROR" not in server_log


def test_tls13_server_refuses_a_client_capped_at_tls12():
    _, server_log = run_client(tls13_server(), r"TLS: Initial packet from",
                               r"TLS error: Unsupported protocol", extra=["--tls-version-max", "1.2"])
    assert "Sent fatal SSL alert: protocol version" in server_log


def test_tls13_server_accepts_tls13():
    _, server_log = run_client(tls13_server(), r"Initialization Sequence Completed")
    assert "Control Channel: TLSv1.3" in server_log


def test_cipher_server_refuses_a_client_without_its_cipher():
    client_log, server_log = run_client(
        cipher_server("AES-128-GCM"), r"AUTH_FAILED,Data channel cipher negotiation failed \(no shared cipher\)",
        r"No common cipher between server and client", extra=["--data-ciphers", "CHACHA20-POLY1305"])
    assert "SENT CONTROL [client]: 'AUTH_FAILED,Data channel cipher negotiation failed (no shared cipher)'" \
        in server_log


def test_auth_script_server_accepts_one_account_only(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text(f"{AUTH_USER}\nwrong {AUTH_PASSWORD}\n")
    client_log, server_log = run_client(
        auth_script_server(), rf"AUTH: Received control message: AUTH_FAILED,{AUTH_FAILED_REASON}",
        r"Auth Username/Password verification failed", extra=["--auth-user-pass", str(credentials)])
    assert f"'AUTH_FAILED,{AUTH_FAILED_REASON}'" in server_log

    credentials.write_text(f"{AUTH_USER}\n{AUTH_PASSWORD}\n")
    _, server_log = run_client(auth_script_server(), r"Initialization Sequence Completed",
                               extra=["--auth-user-pass", str(credentials)])
    assert f"Username/Password authentication succeeded for username '{AUTH_USER}'" in server_log


def test_max_clients_server_refuses_a_second_client():
    server = max_clients_server().start()
    first = pki_client(server).start()
    second = pki_client(server).launch()
    try:
        assert server.wait_for(r"new incoming connection would exceed maximum number of clients \(1\)", 8)
        assert not second.wait_for(r"Initialization Sequence Completed", 1)
    finally:
        second.stop()
        first.stop()
        server.stop()


def test_stop_after_reset_relay_leaves_the_client_with_an_answered_reset_only():
    server = pki_server().start()
    relay = StopAfterResetRelay(server)
    client = pki_client(Relayed(server, relay)).launch()
    try:
        assert client.wait_for(r"TLS: Initial packet from", 8)  # the server's reset came through
        assert relay.stopped
        # the client retransmits its ClientHello; a stopped server answers none of it
        deadline = time.monotonic() + 8
        while relay.passed["up"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.passed == {"up": relay.passed["up"], "down": 1} and relay.passed["up"] >= 3
        assert "VERIFY OK" not in client.log_text()
    finally:
        client.stop()
        relay.close()
        server.stop()
    assert "Peer Connection Initiated" not in server.log_text()


def test_lossy_relay_drops_both_ways_and_a_real_client_still_connects():
    server = pki_server(extra=["--tls-timeout", "1"]).start()
    relay = LossyRelay(server.host, server.port, loss=0.2, seed=11)
    client = pki_client(Relayed(server, relay), extra=["--tls-timeout", "1"]).launch()
    try:
        assert client.wait_for(r"Initialization Sequence Completed", 20), client.log_text()[-1500:]
        assert relay.dropped["up"] >= 1 and relay.dropped["down"] >= 1, relay.dropped
    finally:
        client.stop()
        relay.close()
        server.stop()


def test_lossy_relay_drops_the_share_asked_the_same_places_for_a_seed_and_never_three_in_a_row():
    def decisions(seed):
        relay = LossyRelay("127.0.0.1", 9, loss=0.2, seed=seed)  # (nothing is sent)
        relay.close()
        return "".join("P" if relay.passes("up", b"x") else "F" for _ in range(5000))

    first = decisions(11)
    assert first.count("F") == 1000 and "F" in first[:5] and "FFF" not in first
    assert first.count("FF") >= 1  # (two in a row do happen)
    assert decisions(11) == first and decisions(12) != first
