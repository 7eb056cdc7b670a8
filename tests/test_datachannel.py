"""The data stage against real OpenVPN 2.6 servers on loopback: each AEAD cipher the server is
limited to (--data-ciphers), keys from the TLS exporter and from OpenVPN's PRF, over UDP and
TCP. An answered echo proves the keys, the cipher and the packet layout are the server's: with
anything wrong its tags would not verify (the server drops our echo, we reject its answer).
Then what real servers add: P_DATA_V1 without peer-id, keepalive pings, keys that differ,
loss through a relay, compression framing and --fragment, dev tap, IPv6 outside and inside,
and the explicit-exit-notify each time as the server's log shows it."""

import os
import re
import time

import pytest

from captures import CAPTURES
from ovpndiag.client import Client, HandshakeSettings
from ovpndiag.client import datachannel
from ovpndiag.settings import probe_settings

KEYS = CAPTURES / "keys"
CIPHERS = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"]


def _client(server, derivation="tls-ekm", count=2, ping_target=None):
    settings = HandshakeSettings(probe=probe_settings(host=server.host, port=server.port, proto=server.proto,
                                                      timeout=8),
                                 ca=str(KEYS / "ca.crt"), cert=str(KEYS / "client.crt"), key=str(KEYS / "client.key"),
                                 count=count, ping_target=ping_target)
    client = Client(settings)
    # Not announcing TLS_KEY_EXPORT in IV_PROTO makes a 2.6 server fall back to OpenVPN's PRF.
    client.key_export = derivation == "tls-ekm"
    return client


def _server_lines(server, client_port, pattern):
    """The server log's lines about our session (they carry our address:port) matching pattern."""
    return [line for line in server.log_text().splitlines()
            if f"127.0.0.1:{client_port} " in line and re.search(pattern, line)]


def _wait_for(server, client_port, pattern, timeout=3.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        lines = _server_lines(server, client_port, pattern)
        if lines:
            return lines
        time.sleep(0.02)
    return []


def _assert_no_key_material(client):
    """Neither the data-channel keys nor what they come from appear in the result, its JSON or reprs."""
    import json

    key2, _ = datachannel.derive_key2(client)
    exchange = client.key_exchange
    secrets = [key2[i:i + 8] for i in range(0, 256, 8)] + [exchange.client_pre_master, exchange.client_random1]
    shown = json.dumps(client.result.to_dict(), default=str) + repr(client.result) + repr(client.data_channel.send_keys)
    for secret in secrets:
        assert secret.hex() not in shown and secret.hex(":") not in shown and repr(secret)[2:-1] not in shown


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("derivation", ["tls-ekm", "prf"])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_echo_answered_through_the_data_channel(servers, cipher, derivation, proto):
    server = servers.get(proto=proto, extra=("--data-ciphers", cipher))
    client = _client(server, derivation)
    try:
        assert client.push().ok, client.result.message
        assert client.key_derivation == derivation
        stage = client.data()
        assert stage.ok, stage.detail
        facts = stage.facts
        assert (facts["cipher"], facts["key_derivation"], facts["sent"], facts["received"]) == \
            (cipher, derivation, 2, 2)
        assert facts["format"] == "P_DATA_V2" and facts["rejected"] == 0
        assert 0 < facts["rtt_min"] <= facts["rtt"] <= facts["rtt_max"] < 0.5
        assert facts["target"] == client.push_reply["route_gateway"]
        _assert_no_key_material(client)
        port = client.link.local[1]
        # The server's side: what it pushed to us (cipher; tls-ekm only when we announced key export),
        # and no packet of ours failed its checks.
        [push_reply] = _server_lines(server, port, "SENT CONTROL.*PUSH_REPLY")
        assert f",cipher {cipher}," in push_reply
        assert ("tls-ekm" in push_reply) == (derivation == "tls-ekm")
        assert not _server_lines(server, port, "Authenticate/Decrypt packet error|bad packet ID|replay")
        # The explicit-exit-notify: what close() sends when the server did not announce cc-exit (a 2.6
        # server always does to a client that announces CC_EXIT_NOTIFY, so take it out of what we saw).
        client.push_reply["protocol_flags"] = [f for f in client.push_reply["protocol_flags"] if f != "cc-exit"]
        client.close()
        assert client.result.exit_sent == "explicit-exit-notify"
        assert _wait_for(server, port, "OCC exit message received by peer")
        assert _wait_for(server, port, r"SIGUSR1\[soft,remote-exit\]")
        assert client.result.verdict == "ok" and client.result.data["received"] == 2
    finally:
        client.close()


def test_keepalive_pings_are_recognised_when_the_target_is_silent(servers):
    """A target inside the VPN that nobody answers for: the echoes go unanswered, but the server's
    keepalive pings (--ping 1) arrive, authenticate, are counted and not taken for answers."""
    server = servers.get(proto="tcp", extra=("--data-ciphers", "AES-256-GCM", "--ping", "1"))
    client = _client(server, count=3, ping_target=None)  # 3 s: the server pings after 1 s of silence
    try:
        assert client.push().ok, client.result.message
        gateway = client.push_reply["route_gateway"]
        client.settings.ping_target = gateway.rsplit(".", 1)[0] + ".77"  # in the subnet, no such client
        stage = client.data()
        facts = stage.facts
        assert not stage.ok
        assert (facts["sent"], facts["received"], facts["rejected"]) == (3, 0, 0)
        assert facts["target"].endswith(".77") and facts["keepalive_pings"] >= 1
        assert "keepalive pings" in stage.detail and "the data channel works" in stage.detail
        assert client.result.verdict == "echo-unanswered"
    finally:
        client.close()


def test_exit_notify_alone_ends_the_servers_session(servers):
    """send_exit_notify's bytes (occ.c: occ_magic, OCC_EXIT) are what the server acts on: after it,
    our session is gone from the server even though we sent nothing else."""
    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-256-GCM"))
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        port = client.link.local[1]
        assert datachannel.send_exit_notify(client)
        assert _wait_for(server, port, "OCC exit message received by peer")
        assert not _server_lines(server, port, "CC-EEN exit message")
    finally:
        client.close()


class _PRFAnyway(Client):
    """Announces key export (the server then takes tls-ekm) but derives with the PRF, as a broken
    client would."""

    key_derivation = "prf"


def test_keys_that_differ_from_the_servers_are_diagnosed_over_udp(servers):
    """The server drops our echoes (its log says why) and its keepalive pings fail our tag check:
    data-keys-mismatch, not a silent target."""
    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-256-GCM", "--ping", "1"))
    client = _PRFAnyway(_client(server, count=3).settings)  # 3 s: the server pings after 1 s of silence
    client.settings.probe.retries = 0
    try:
        assert client.push().ok, client.result.message
        assert "tls-ekm" in client.push_reply["protocol_flags"]
        port = client.link.local[1]
        stage = client.data()
        facts = stage.facts
        assert not stage.ok and facts["key_derivation"] == "prf", stage.detail
        assert (facts["sent"], facts["received"], facts["keepalive_pings"]) == (3, 0, 0), stage.detail
        assert facts["rejected"] >= 1 and "tag does not verify" in stage.detail
        assert client.result.verdict == "data-keys-mismatch"
        assert _wait_for(server, port, "AEAD Decrypt error|Authenticate/Decrypt packet error")
    finally:
        client.close()


def test_keys_that_differ_from_the_servers_are_diagnosed_over_tcp(servers):
    """Over TCP the server closes the connection on our first undecryptable data packet."""
    server = servers.get(proto="tcp", extra=("--data-ciphers", "AES-256-GCM"))
    client = _PRFAnyway(_client(server).settings)
    try:
        assert client.push().ok, client.result.message
        port = client.link.local[1]
        stage = client.data()
        assert not stage.ok and (stage.facts["sent"], stage.facts["received"]) == (1, 0), stage.detail
        assert "dropped the connection after 1 data packet of ours" in stage.detail
        assert client.result.verdict == "data-keys-mismatch"
        assert _wait_for(server, port, "AEAD Decrypt error|Authenticate/Decrypt packet error")
    finally:
        client.close()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_p_data_v1_when_the_server_pushes_no_peer_id(servers, monkeypatch, proto):
    """A client that does not announce DATA_V2 in IV_PROTO (as before 2.3.x) gets no peer-id: the
    data channel is P_DATA_V1, whose 1-byte header is not authenticated."""
    import ovpndiag.client.session as session

    announced = session.peer_info

    def without_data_v2(*args, **kwargs):
        info = announced(*args, **kwargs)
        info["IV_PROTO"] = str(int(info["IV_PROTO"]) & ~2)
        return info

    monkeypatch.setattr(session, "peer_info", without_data_v2)
    server = servers.get(proto=proto, extra=("--data-ciphers", "CHACHA20-POLY1305"))
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        assert client.push_reply.get("peer_id") is None
        port = client.link.local[1]
        [push_reply] = _server_lines(server, port, "SENT CONTROL.*PUSH_REPLY")
        assert "peer-id" not in push_reply
        stage = client.data()
        assert stage.ok, stage.detail
        assert (stage.facts["format"], stage.facts["peer_id"], stage.facts["received"]) == ("P_DATA_V1", None, 2)
    finally:
        client.close()


def test_loss_is_counted_and_the_exit_notify_survives_a_lost_copy(servers, monkeypatch):
    """Through a UDP relay that drops chosen data packets: echoes 2 and 5 on the way up, the third
    answer on the way down, and the first copy of the exit notification. 8 echoes then give exactly
    5 answers (37.5% loss) and the server still acts on the exit notification's second copy."""
    from servers import UDPRelay

    class DropDataPackets(UDPRelay):
        def __init__(self, host, port, up, down):
            self.drop, self.seen = {"up": up, "down": down}, {"up": 0, "down": 0}
            super().__init__(host, port)

        def passes(self, direction, data):
            if data[0] >> 3 not in (6, 9):
                return True
            self.seen[direction] += 1
            return self.seen[direction] not in self.drop[direction]

    monkeypatch.setattr(datachannel, "ECHO_INTERVAL", 0.5)  # lost echoes need not cost a second each
    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-128-GCM"))
    relay = DropDataPackets(server.host, server.port, up={2, 5, 9}, down={3})
    try:
        client = _client(Relayed(relay), count=8)
        try:
            assert client.push().ok, client.result.message
            stage = client.data()
            facts = stage.facts
            assert stage.ok, stage.detail
            assert (facts["sent"], facts["received"], facts["loss"]) == (8, 5, 37.5), stage.detail
            assert "5/8 echoes" in stage.detail
            client.push_reply["protocol_flags"] = [f for f in client.push_reply["protocol_flags"] if f != "cc-exit"]
            client.close()
            assert client.result.exit_sent == "explicit-exit-notify"
            port = relay.upstream.getsockname()[1]  # the server sees us from the relay's port
            assert _wait_for(server, port, "OCC exit message received by peer")
            until = time.monotonic() + 2
            while relay.seen["up"] < 8 + 3 and time.monotonic() < until:  # the relay's thread may lag
                time.sleep(0.01)
            assert relay.seen == {"up": 8 + 3, "down": 6}
        finally:
            client.close()
    finally:
        relay.close()


class Relayed:
    """A relay seen as a server by _client (host, port, proto)."""

    def __init__(self, relay):
        self.host, self.port, self.proto = relay.host, relay.port, "udp"


@pytest.mark.parametrize("server_options,framing", [
    (("--comp-lzo", "no", "--push", "comp-lzo no"), "lzo"),
    (("--compress", "--push", "compress"), "swap"),
    (("--compress", "lz4-v2", "--allow-compression", "yes", "--push", "compress lz4-v2"), "v2"),
])
def test_pushed_compression_framing_is_honoured(servers, server_options, framing):
    """Servers configured with comp-lzo or compress frame every data-channel payload even when
    nothing is compressed; the pushed option says how. The exit notification is framed too."""
    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-256-GCM") + server_options)
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        port = client.link.local[1]
        stage = client.data()
        assert stage.ok, stage.detail
        assert (stage.facts["compression"], stage.facts["received"]) == (framing, 2)
        client.push_reply["protocol_flags"] = [f for f in client.push_reply["protocol_flags"] if f != "cc-exit"]
        client.close()
        assert _wait_for(server, port, "OCC exit message received by peer")
        assert not _server_lines(server, port, "Bad compression")
    finally:
        client.close()


def test_compression_the_server_does_not_push_comes_from_the_profile(servers, tmp_path):
    """A server with comp-lzo in its configuration but no push: a client must be configured the same
    (the profile's comp-lzo, settings.compress). Without it the server drops every packet of ours,
    saying why in its log only."""
    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-256-GCM", "--comp-lzo", "no"))
    unframed = _client(server, count=1)
    unframed.settings.probe.retries = 0
    try:
        assert unframed.push().ok, unframed.result.message
        port = unframed.link.local[1]
        stage = unframed.data()
        assert not stage.ok and stage.facts["compression"] == "none"
        assert _wait_for(server, port, "Bad compression stub decompression header byte: 69")  # 0x45, IPv4
    finally:
        unframed.close()
    from ovpndiag.handshake_settings import handshake_settings

    profile = tmp_path / "client.ovpn"
    profile.write_text(f"client\nremote {server.host} {server.port} udp\ncomp-lzo no\nca {KEYS / 'ca.crt'}\n"
                       f"cert {KEYS / 'client.crt'}\nkey {KEYS / 'client.key'}\n")
    settings = handshake_settings(probe_settings(config=str(profile)), config=str(profile), count=2)
    assert settings.compress == "comp-lzo no"
    framed = Client(settings)
    result = framed.run()
    assert result.verdict == "ok", result.message
    assert (result.data["compression"], result.data["received"]) == ("lzo", 2)


def test_a_fragment_profile_against_a_fragment_server(servers, tmp_path):
    """--fragment puts a 4-byte header (FRAG_WHOLE: zeros) before every data payload; it is not
    pushed, so it comes from the profile. Without it the server drops our packets."""
    from ovpndiag.handshake_settings import handshake_settings

    server = servers.get(proto="udp", extra=("--data-ciphers", "AES-256-GCM", "--fragment", "1300"))
    results = {}
    for fragment in ("", "fragment 1300\n"):
        profile = tmp_path / "client.ovpn"
        profile.write_text(f"client\nremote {server.host} {server.port} udp\n{fragment}ca {KEYS / 'ca.crt'}\n"
                           f"cert {KEYS / 'client.crt'}\nkey {KEYS / 'client.key'}\n")
        settings = handshake_settings(probe_settings(config=str(profile), retries=0), config=str(profile), count=2)
        results[bool(fragment)] = Client(settings).run()
    assert results[True].verdict == "ok", results[True].message
    assert results[True].data["fragment"] is True and results[True].data["received"] == 2
    assert results[False].verdict == "data-one-way" and results[False].data["received"] == 0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_data_channel_over_ipv6(servers, proto):
    """The tunnel carries IPv4 echoes whatever the outer transport: here IPv6 to ::1."""
    server = servers.get(proto=proto, family=6, extra=("--data-ciphers", "CHACHA20-POLY1305"))
    client = _client(server)
    try:
        result = client.run()
        assert result.verdict == "ok", result.message
        assert result.address.startswith("::1") or result.address.startswith("[::1]"), result.address
        assert (result.data["cipher"], result.data["received"]) == ("CHACHA20-POLY1305", 2)
    finally:
        client.close()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_a_dev_tap_server_gets_ethernet_frames(servers, proto):
    """A dev tap server (its key-method options say dev-type tap) carries Ethernet: the target's MAC
    by ARP first (the server's kernel answers), then the echo in a frame; the exit notification
    is not a frame and still ends the session."""
    server = servers.get(proto=proto, extra=("--data-ciphers", "AES-256-GCM", "--dev-type", "tap"))
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        port = client.link.local[1]
        stage = client.data()
        assert stage.ok, stage.detail
        assert (stage.facts["dev_type"], stage.facts["received"]) == ("tap", 2) and "dev tap" in stage.detail
        client.push_reply["protocol_flags"] = [f for f in client.push_reply["protocol_flags"] if f != "cc-exit"]
        client.close()
        assert _wait_for(server, port, "OCC exit message received by peer")
    finally:
        client.close()


def test_a_dev_tap_target_that_does_not_answer_arp(servers):
    server = servers.get(proto="tcp", extra=("--data-ciphers", "AES-256-GCM", "--dev-type", "tap"))
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        client.settings.ping_target = client.push_reply["route_gateway"].rsplit(".", 1)[0] + ".77"
        stage = client.data()
        assert not stage.ok and (stage.facts["arp"], stage.facts["sent"]) == ("unanswered", 0)
        assert "no ARP answer from" in stage.detail and client.result.verdict == "echo-unanswered"
    finally:
        client.close()


# an IPv6 prefix of this test run's own, as servers.py gives each server its IPv4 subnet
IPV6_PREFIX = f"fd{os.getpid() % 256:02x}:{os.getpid() % 65536:x}:6::/64"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_icmpv6_echo_through_the_tunnel(servers, proto):
    """With --ping-target an IPv6 address, the echo is ICMPv6 from the pushed ifconfig-ipv6 address,
    answered by the server's kernel."""
    server = servers.get(proto=proto, extra=("--data-ciphers", "AES-128-GCM", "--server-ipv6", IPV6_PREFIX))
    client = _client(server)
    try:
        assert client.push().ok, client.result.message
        ours, theirs = client.push_reply["ifconfig_ipv6"]
        client.settings.ping_target = theirs
        stage = client.data()
        assert stage.ok, stage.detail
        assert (stage.facts["source"], stage.facts["target"], stage.facts["received"]) == \
            (ours.split("/")[0], theirs, 2)
    finally:
        client.close()
