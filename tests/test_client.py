"""The staged handshake client (ovpndiag.client) against real OpenVPN 2.6 servers on
loopback: reset -> tls -> auth -> push with every wrapping over UDP and TCP, each
proven from the server's side (its log shows the peer initiated, the PUSH_REPLY
sent and our EXIT received), and the control channel's reliability through a
relay that loses, duplicates and reorders packets."""

import datetime
import json
import re
import socket
import threading
import time

import pytest

from captures import key_path
from ovpndiag.client import STAGES, Client, CredentialsError, HandshakeResult, HandshakeSettings
from ovpndiag.settings import probe_settings
from servers import LossyRelay, UDPRelay, free_port

KEYS = {name: str(key_path(f"keys/{name}")) for name in
        ("ca.crt", "client.crt", "client.key", "ta.key", "tc.key", "tcv2-client.key", "rogue-ca.crt")}
TA, TC, V2 = KEYS["ta.key"], KEYS["tc.key"], KEYS["tcv2-client.key"]


def settings_for(host, port, proto="udp", timeout=5.0, **options):
    credentials = {name: options.pop(name) for name in ("ca", "cert", "key", "remote_cert_tls", "verify_x509_name",
                                                         "auth_user_pass") if name in options}
    credentials.setdefault("ca", KEYS["ca.crt"])
    credentials.setdefault("cert", KEYS["client.crt"])
    credentials.setdefault("key", KEYS["client.key"])
    return HandshakeSettings(probe=probe_settings(host=host, port=port, proto=proto, timeout=timeout, **options),
                             **credentials)


def local_port(client):
    """The port our packets came from, as the server's log names the peer."""
    return client.exchange[0][1][1]


def wait_for_log(server, pattern, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, server.log_text()):
            return True
        time.sleep(0.05)
    return False


def assert_server_saw_a_whole_session(server, client, exit_sent="cc-exit", port=None):
    """The server's log, from the line where it names our port: the peer initiated,
    the PUSH_REPLY sent to it, our EXIT received. (Over IPv6 the later lines name
    the peer without its port: they are taken after that line, as tests run one at a time.)"""
    port = port or local_port(client)
    initiated = rf"(\S+) \[[^\]]+\] Peer Connection Initiated with \[AF_INET6?\]\S*:{port}\b"
    assert wait_for_log(server, initiated), server.log_text()[-2000:]
    deadline = time.monotonic() + 3.0
    while True:
        log = server.log_text()
        found = list(re.finditer(initiated, log))[-1]
        peer = re.escape(found.group(1).split("/")[-1])
        after = log[found.end():]
        pushed = re.search(rf"(/{peer}(:{port})? |\d )SENT CONTROL \[[^\]]+\]: 'PUSH_REPLY", after)
        exited = re.search(rf"/{peer}(:{port})? (CC-EEN )?exit message received by peer", after)
        if pushed and (exited or exit_sent != "cc-exit"):
            return
        assert time.monotonic() < deadline, f"PUSH_REPLY sent: {bool(pushed)}, EXIT received: {bool(exited)}\n" \
                                            + after[-2000:]
        time.sleep(0.05)


SERVERS_AND_KEYS = [
    (dict(proto="udp"), {}),
    (dict(proto="tcp"), {}),
    (dict(proto="udp", family=6), {}),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA1"), dict(tls_auth=TA)),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA256"), dict(tls_auth=TA, auth="SHA256")),
    (dict(proto="tcp", wrapping="tls-auth", auth="SHA512"), dict(tls_auth=TA, auth="SHA512")),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA1", key_direction=None), dict(tls_auth=TA, key_direction="none")),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA256", key_direction=1), dict(tls_auth=TA, auth="SHA256",
                                                                                   key_direction="0")),
    (dict(proto="udp", wrapping="tls-crypt"), dict(tls_crypt=TC)),
    (dict(proto="tcp", wrapping="tls-crypt"), dict(tls_crypt=TC)),
    (dict(proto="udp", wrapping="tls-crypt-v2"), dict(tls_crypt_v2=V2)),
    (dict(proto="tcp", wrapping="tls-crypt-v2"), dict(tls_crypt_v2=V2)),
    # force-cookie: the server keeps no state until our first control packet brings the WKc again
    (dict(proto="udp", extra=("--tls-crypt-v2", "keys/tcv2-server.key", "force-cookie")), dict(tls_crypt_v2=V2)),
]


def _id(server_config, options):
    wrapping = server_config.get("wrapping") or ("tls-crypt-v2-force-cookie" if server_config.get("extra") else "none")
    direction = server_config.get("key_direction", 0) if wrapping == "tls-auth" else ""
    return f"{server_config['proto']}{server_config.get('family', 4)}-{wrapping}-{server_config.get('auth', '')}" \
           f"{'' if direction == '' else f'-dir{direction}'}"


@pytest.mark.parametrize("server_config,options", SERVERS_AND_KEYS,
                         ids=[_id(s, o) for s, o in SERVERS_AND_KEYS])
def test_push_reached_with_every_wrapping(servers, server_config, options):
    server = servers.get(**server_config)
    client = Client(settings_for(server.host, server.port, server_config["proto"], **options))
    started = time.monotonic()
    result = client.run("push")
    assert result.verdict == "ok", result.message
    assert [s.name for s in result.stages] == ["reset", "tls", "auth", "push"]
    assert all(s.ok for s in result.stages)
    elapsed = [s.elapsed for s in result.stages]
    assert elapsed == sorted(elapsed) and elapsed[-1] < 2.0
    assert time.monotonic() - started < 3.5
    # what the server told us, parsed
    reply = result.push_reply
    assert reply["peer_id"] is not None and reply["cipher"] in ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    assert len(reply["ifconfig"]) == 2 and reply["route_gateway"]
    assert "cc-exit" in reply["protocol_flags"] and "tls-ekm" in reply["protocol_flags"]
    assert result.tls["version"] == "TLSv1.3" and result.tls["cipher"].startswith("TLS_")
    certificate = result.server_certificate
    assert certificate["subject"] == "O=ovpndiag test material, CN=ovpndiag-test-server"
    assert certificate["issuer"] == "O=ovpndiag test material, CN=ovpndiag-test-ca"
    assert certificate["verified"] is True and certificate["key"] == "EC secp256r1"
    assert certificate["days_left"] > 365 and len(certificate["chain"]) >= 1
    assert result.exit_sent == "cc-exit"
    assert client.key_derivation == "tls-ekm" and len(client.tls_export("EXPORTER-OpenVPN-datakeys", 256)) == 256
    assert len(client.session_id) == 8 and len(client.remote_session_id) == 8
    assert len(client.key_exchange.server_random1) == 32 and len(client.key_exchange.server_random2) == 32
    assert_server_saw_a_whole_session(server, client)
    if server_config.get("extra"):  # force-cookie: our first control packet carried the WKc again
        assert result.stages[0].facts["early_negotiation"] == "RESEND_WKC"
        assert any(packet[0] >> 3 == 11 for _, _, _, _, packet, sent in client.exchange if sent)


def test_stages_one_by_one_and_the_json(servers):
    server = servers.get(proto="udp")
    client = Client(settings_for(server.host, server.port))
    reset = client.reset()
    assert reset.ok and reset.name == "reset" and client.remote_session_id is not None
    assert client.tls_export("EXPORTER-OpenVPN-datakeys", 16) is None  # no TLS yet
    tls = client.tls()
    assert tls.ok and tls.facts["version"] == "TLSv1.3" and "verified" in tls.detail
    assert client.auth().ok and client.server_key_message.options.startswith("V4,")
    push = client.push()
    assert push.ok and push.detail.startswith("PUSH_REPLY: ifconfig ")
    assert client.tls() is tls  # a stage runs once
    client.close()
    client.close()
    data = json.loads(json.dumps(client.result.to_dict()))  # plain JSON all through, facts included
    assert [s["name"] for s in data["stages"]] == ["reset", "tls", "auth", "push"]
    assert data["stages"][1]["facts"]["server_certificate"]["subject"].endswith("CN=ovpndiag-test-server")
    assert data["verdict"] == "ok" and data["exit_sent"] == "cc-exit" and data["ok"] is True
    assert_server_saw_a_whole_session(server, client)


def test_a_later_stage_runs_the_earlier_ones(servers):
    server = servers.get(proto="tcp")
    client = Client(settings_for(server.host, server.port, "tcp"))
    try:
        assert client.auth().ok
        assert [s.name for s in client.result.stages] == ["reset", "tls", "auth"]
    finally:
        client.close()


def test_credentials_are_never_in_the_result_or_its_repr(servers):
    server = servers.get(proto="udp")
    settings = settings_for(server.host, server.port, auth_user_pass=("alice", "s3cret-pw"))
    client = Client(settings)
    result = client.run("push")  # the server has no auth script: the password is sent and ignored
    assert result.verdict == "ok"
    assert result.stages[2].facts["username"] == "alice"
    text = repr(result.to_dict()) + repr(settings) + repr(client.key_exchange) + " ".join(client.control_messages)
    assert "s3cret-pw" not in text
    assert "BEGIN" not in text and client.key_exchange.client_pre_master.hex() not in text


def test_peer_info_announces_what_we_support_and_a_stop_after_auth_still_says_exit(servers):
    server = servers.get(proto="udp")
    client = Client(settings_for(server.host, server.port))
    result = client.run("auth")
    assert result.verdict == "ok" and result.exit_sent == "cc-exit"  # before any PUSH_REPLY: 2.6 takes it
    assert wait_for_log(server, rf":{local_port(client)} CC-EEN exit message received by peer")
    info = result.stages[2].facts["peer_info_sent"]
    assert int(info["IV_PROTO"]) & (1 << 1 | 1 << 2 | 1 << 3 | 1 << 7) == (1 << 1 | 1 << 2 | 1 << 3 | 1 << 7)
    assert info["IV_NCP"] == "2" and info["IV_CIPHERS"] == "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
    port = local_port(client)
    assert wait_for_log(server, rf":{port} peer info: IV_PROTO={info['IV_PROTO']}")
    assert wait_for_log(server, rf":{port} peer info: IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305")


def test_without_a_ca_the_server_certificate_is_shown_not_verified(servers):
    server = servers.get(proto="udp")
    settings = settings_for(server.host, server.port)
    settings.ca, settings.stage = None, "tls"
    result = Client(settings).run()  # up to the settings' stage
    assert [s.name for s in result.stages] == ["reset", "tls"]
    assert result.verdict == "ok"
    assert result.server_certificate["verified"] is False
    assert "no CA given" in result.server_certificate["verify_errors"][0]
    assert "NOT verified" in result.stages[1].detail


def test_untrusted_server_ca_is_refused_by_us(servers):
    server = servers.get(proto="udp")
    client = Client(settings_for(server.host, server.port, ca=KEYS["rogue-ca.crt"]))
    result = client.run("push")
    assert result.verdict == "server-certificate-rejected"
    assert [s.ok for s in result.stages] == [True, False]
    # the server sends its CA too: that one is self-signed and not ours
    assert result.message.startswith("server certificate verify failed: self-signed certificate in certificate "
                                     "chain (depth 1, O=ovpndiag test material, CN=ovpndiag-test-ca)")
    assert result.server_certificate["verified"] is False
    assert result.exit_sent is None
    # our alert is named, and it reached the server
    assert {"direction": "sent", "level": "fatal", "description": "unknown_ca"} in result.stages[1].facts["alerts"]
    assert "we sent the server TLS alert unknown_ca" in result.message
    assert wait_for_log(server, rf":{local_port(client)} Received fatal SSL alert: unknown CA")


def test_tls_1_2_and_a_key_log(servers, tmp_path):
    server = servers.get(proto="tcp")
    settings = settings_for(server.host, server.port, "tcp")
    settings.tls_version_max, settings.keylog = "1.2", str(tmp_path / "keys.log")
    client = Client(settings)
    result = client.run("push")
    assert result.verdict == "ok", result.message
    assert result.tls["version"] == "TLSv1.2" and "GCM" in result.tls["cipher"]
    assert len(client.tls_export("EXPORTER-OpenVPN-datakeys", 256)) == 256  # RFC 5705 under TLS 1.2 too
    log = (tmp_path / "keys.log").read_text()
    assert re.fullmatch(r"(CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}\n)+", log), log
    assert wait_for_log(server, rf":{local_port(client)} Control Channel: TLSv1.2")


def test_a_push_reply_in_several_parts_is_joined(servers):
    routes = [f"10.{200 + i // 250}.{i % 250}.0 255.255.255.0" for i in range(120)]
    extra = tuple(arg for route in routes for arg in ("--push", f"route {route}"))
    server = servers.get(proto="udp", extra=extra)
    client = Client(settings_for(server.host, server.port))
    result = client.run("push")
    assert result.verdict == "ok", result.message
    replies = [m for m in client.control_messages if m.startswith("PUSH_REPLY")]
    assert len(replies) >= 2 and "push-continuation 2" in replies[0] and "push-continuation 1" in replies[-1]
    assert result.push_reply["routes"] == routes  # all of them, in order, once
    assert not any("push-continuation" in option for option in result.push_reply["raw"])
    assert result.push_reply["peer_id"] is not None and result.push_reply["ifconfig"]


def test_without_cc_exit_the_data_channel_says_goodbye(servers, monkeypatch):
    """A client that does not announce CC_EXIT_NOTIFY is not offered cc-exit: then the
    explicit-exit-notify goes through the data channel (datachannel.py) and the server
    ends the session on it."""
    from ovpndiag.client import keymethod

    original = keymethod.peer_info

    def without_cc_exit(*args, **kwargs):
        info = original(*args, **kwargs)
        info["IV_PROTO"] = str(int(info["IV_PROTO"]) & ~keymethod.IV_PROTO_CC_EXIT_NOTIFY)
        return info

    monkeypatch.setattr("ovpndiag.client.session.peer_info", without_cc_exit)
    server = servers.get(proto="udp")
    client = Client(settings_for(server.host, server.port))
    result = client.run("push")
    assert result.verdict == "ok", result.message
    assert "cc-exit" not in result.push_reply["protocol_flags"]
    assert result.exit_sent == "explicit-exit-notify"
    port = local_port(client)
    assert wait_for_log(server, rf":{port} OCC exit message received by peer"), \
        server.log_text()[-1500:]


@pytest.mark.parametrize("name,kind,ok", [
    ("O=ovpndiag test material, CN=ovpndiag-test-server", "subject", True),
    ("ovpndiag-test-server", "name", True),
    ("ovpndiag-test-", "name-prefix", True),
    ("ovpndiag-test-serv", "name", False),
    ("CN=ovpndiag-test-server", "subject", False),
    ("other", "name-prefix", False),
])
def test_verify_x509_name(servers, name, kind, ok):
    server = servers.get(proto="udp")
    result = Client(settings_for(server.host, server.port, verify_x509_name=(name, kind),
                                 remote_cert_tls="server")).run("tls")
    assert result.verdict == ("ok" if ok else "server-certificate-rejected"), result.message
    if not ok:
        assert result.message.startswith("verify-x509-name: ")


def test_bad_credentials_are_one_line_errors_before_anything_is_sent(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    settings = settings_for("127.0.0.1", 9, ca=str(bad))
    with pytest.raises(CredentialsError, match="no PEM certificate"):
        Client(settings)
    with pytest.raises(CredentialsError, match="cannot read"):
        Client(settings_for("127.0.0.1", 9, key=str(tmp_path / "missing.key")))
    with pytest.raises(CredentialsError, match="does not match"):
        Client(settings_for("127.0.0.1", 9, key=str(key_path("keys/rogue-client.key"))))
    # an encrypted key: its passphrase is needed, and a wrong one is said so
    from cryptography.hazmat.primitives import serialization

    plain = serialization.load_pem_private_key(key_path("keys/client.key").read_bytes(), None)
    encrypted = plain.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"open sesame"))
    with pytest.raises(CredentialsError, match="encrypted; give its passphrase"):
        Client(settings_for("127.0.0.1", 9, key=encrypted))
    settings = settings_for("127.0.0.1", 9, key=encrypted)
    settings.key_password = b"wrong"
    with pytest.raises(CredentialsError, match="wrong passphrase") as raised:
        Client(settings)
    assert "\n" not in str(raised.value) and "open sesame" not in str(raised.value)
    settings.key_password = b"open sesame"
    assert Client(settings).tls_client is not None


class ShufflingRelay(UDPRelay):
    """Passes every datagram from the server twice, and holds each P_CONTROL_V1 until the
    next one comes (then sends the later first) or 60 ms pass: duplicates and reordering,
    no loss."""

    def __init__(self, host, port):
        self.held, self.lock = None, threading.Lock()
        super().__init__(host, port)

    def passes(self, direction, data):
        if direction == "up":
            return True
        if data[0] >> 3 != 4:
            self._send(data, data)
            return False
        with self.lock:
            if self.held is None:
                self.held = data
                threading.Timer(0.06, self._release, args=(data,)).start()
                return False
            first, self.held = self.held, None
        self._send(data, data, first, first)
        return False

    def _send(self, *packets):
        for packet in packets:
            try:
                self.sock.sendto(packet, self.client)
            except OSError:
                pass

    def _release(self, data):
        with self.lock:
            if self.held is not data:
                return
            self.held = None
        self._send(data, data)


def test_duplicates_and_reordering_are_handled(servers):
    server = servers.get(proto="udp")
    relay = ShufflingRelay(server.host, server.port)
    try:
        client = Client(settings_for(relay.host, relay.port))
        result = client.run("push")
    finally:
        relay.close()
    assert result.verdict == "ok", result.message
    assert client.channel.duplicates >= 3 and client.channel.out_of_order >= 1
    assert result.exit_sent == "cc-exit"


def test_twenty_percent_loss_each_way_is_survived_by_retransmission(servers):
    server = servers.get(proto="udp")
    relay = LossyRelay(server.host, server.port, loss=0.2, seed=2)
    relay_port = relay.upstream.getsockname()[1]  # the server sees us from there
    try:
        client = Client(settings_for(relay.host, relay.port, timeout=20))
        result = client.run("push")
    finally:
        relay.close()
    assert result.verdict == "ok", result.message
    assert relay.dropped["up"] >= 1 and relay.dropped["down"] >= 1
    assert client.channel.retransmissions >= 1
    assert_server_saw_a_whole_session(server, client, port=relay_port)


class Manager:
    """The server's management interface with --management-client-auth: each client's
    authentication is answered with ``self.command`` ("{cid}" and "{kid}" filled in)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rwb")
        self.command, self.lines = None, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            for raw in self.file:
                line = raw.decode(errors="replace").strip()
                self.lines.append(line)
                if line.startswith(">CLIENT:CONNECT,") and self.command:
                    cid, kid = line.split(",")[1:3]
                    self.file.write(self.command.format(cid=cid, kid=kid).encode() + b"\n")
                    self.file.flush()
        except (OSError, ValueError):
            return

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def managed(servers):
    port = free_port("tcp")
    server = servers.get(proto="udp", extra=("--management", "127.0.0.1", str(port), "--management-client-auth"))
    manager = Manager(port)
    yield server, manager
    manager.close()


@pytest.mark.parametrize("command,verdict,message,exit_sent", [
    ('client-pending-auth {cid} {kid} "WEB_AUTH::https://vpn.example/login" 30', "auth-pending",
     "the server waits for an extra authentication (AUTH_PENDING, timeout 30: WEB_AUTH::https://vpn.example/login)",
     "cc-exit"),
    ('client-deny {cid} {kid} "script said no" "go away"', "auth-failed", "authentication failed (AUTH_FAILED: go away)",
     None),
    ("client-kill {cid} HALT", "server-halted", "the server said HALT", None),
    ("client-kill {cid} RESTART", "server-restart", "the server said RESTART", None),
])
def test_what_the_server_says_instead_of_a_push_reply(managed, command, verdict, message, exit_sent):
    server, manager = managed
    manager.command = command
    client = Client(settings_for(server.host, server.port, auth_user_pass=("alice", "pw")))
    result = client.run("push")
    assert (result.verdict, result.message) == (verdict, message)
    assert [s.ok for s in result.stages] == [True, True, True, False] and result.stages[-1].name == "push"
    assert result.push_reply is None and result.exit_sent == exit_sent
    if exit_sent:  # a pending session is ended at once, not left to its 30 s timeout
        assert wait_for_log(server, rf":{local_port(client)} CC-EEN exit message received by peer")


@pytest.mark.parametrize("layer,fields", [
    ("OpenVPNControl", dict(opcode=4, session_id=0x1122334455667788, acks=[], message_packet_id=1)),
    ("OpenVPNControl", dict(opcode=4, session_id=1, acks=[7, 3, 1, 0], remote_session_id=2**64 - 1,
                            message_packet_id=0xFFFFFFFF)),
    ("OpenVPNReset", dict(opcode=7, session_id=5, message_packet_id=0)),
    ("OpenVPNAck", dict(session_id=9, acks=list(range(8)), remote_session_id=10)),
])
def test_the_fast_build_gives_scapys_bytes(layer, fields):
    from scapy.packet import Raw

    from ovpndiag import layers
    from ovpndiag.client.reliable import build
    from ovpndiag.protocol import PLAIN

    cls = getattr(layers, layer)
    payload = b"\x16\x03\x01" + bytes(range(256)) if layer == "OpenVPNControl" else b""
    expected = bytes(cls(**fields, wrapping=PLAIN) / Raw(payload)) if payload else bytes(cls(**fields, wrapping=PLAIN))
    assert build(cls(**fields, wrapping=PLAIN), payload) == expected
    packet, problem = layers.from_wire(expected)
    assert problem is None and packet.session_id == fields["session_id"]


def _scapy_fields(data):
    """What ControlChannel.read takes from a packet, read by Scapy (None: malformed)."""
    from ovpndiag import layers

    packet, problem = layers.from_wire(data)
    if problem:
        return None
    acks = list(packet.acks or [])
    payload = bytes(packet.payload) if packet.opcode in (3, 4) else b""
    return (packet.opcode, packet.key_id, packet.session_id, acks,
            packet.message_packet_id if "message_packet_id" in packet.fields else None,
            packet.remote_session_id if acks else None, payload, list(getattr(packet, "tlvs", None) or []))


def _codec_fields(received):
    return (received.opcode, received.key_id, received.session_id, received.acks, received.message_packet_id,
            received.remote_session_id, received.payload, received.tlvs)


def test_the_struct_codec_builds_and_reads_what_scapy_does():
    """PlainCodec (structs read off the layers' field lists) against the layers themselves:
    every opcode it builds or reads, every ACK count, random values; and mangled packets
    are either read the same or left to Scapy (None), never read differently."""
    import random

    from scapy.packet import Raw

    from ovpndiag import layers
    from ovpndiag.client.reliable import CODEC
    from ovpndiag.protocol import MAX_ACKS, PLAIN

    rng = random.Random(5)
    shapes = [(layers.OpenVPNControl, 4), (layers.OpenVPNControl, 3), (layers.OpenVPNAck, 5),
              (layers.OpenVPNReset, 7), (layers.OpenVPNReset, 8)]
    packets = []
    for layer, opcode in shapes:
        for count in range(MAX_ACKS + 1):
            for _ in range(3):
                fields = dict(opcode=opcode, key_id=rng.randrange(8), session_id=rng.getrandbits(64),
                              acks=[rng.getrandbits(32) for _ in range(count)])
                if count:
                    fields["remote_session_id"] = rng.getrandbits(64)
                if layer is not layers.OpenVPNAck:
                    fields["message_packet_id"] = rng.getrandbits(32)
                payload = rng.randbytes(rng.randrange(1, 1200)) if layer is layers.OpenVPNControl else b""
                expected = bytes(layer(**fields, wrapping=PLAIN) / Raw(payload)) if payload else \
                    bytes(layer(**fields, wrapping=PLAIN))
                assert CODEC.build(layer, fields, payload) == expected, (layer.__name__, count)
                packets.append(expected)
    read = 0
    for data in packets:
        received = CODEC.read(data)
        if data[0] >> 3 in (3, 4, 5, 8):  # the server's packets: all read here
            assert received is not None and _codec_fields(received) == _scapy_fields(data)
            read += 1
        else:
            assert received is None  # a client reset is not ours to read
    assert read == 4 * (MAX_ACKS + 1) * 3
    # left to Scapy: a reset with TLVs, bytes after a P_ACK_V1's ACKs, too many ACKs
    with_tlv = bytes(layers.OpenVPNReset(opcode=8, session_id=1, acks=[0], remote_session_id=2, message_packet_id=0,
                                         tlvs=[layers.EarlyNegotiationFlags(flags=1)], wrapping=PLAIN))
    assert CODEC.read(with_tlv) is None and _scapy_fields(with_tlv)[7]
    assert CODEC.read(packets[2 * 27] + b"x") is None and _scapy_fields(packets[2 * 27] + b"x") is None
    nine = bytes([4 << 3]) + bytes(8) + bytes([9]) + bytes(9 * 4 + 8 + 4)
    assert CODEC.read(nine) is None and _scapy_fields(nine) is None
    for _ in range(3000):  # mangled: cut short, bytes flipped
        data = bytearray(rng.choice(packets))
        if rng.random() < 0.5:
            del data[rng.randrange(1, len(data)):]
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
        received = CODEC.read(data)
        if received is not None:
            assert _codec_fields(received) == _scapy_fields(data)


def test_the_struct_codec_takes_its_structs_from_wirelayout():
    """One generator: PlainCodec packs and reads with wirelayout's structs, so a field
    added to a layer (here one after the message packet-id) is in what it builds and
    reads, with no edit of the client."""
    from scapy.fields import IntField
    from scapy.packet import Raw

    from ovpndiag import layers, wirelayout
    from ovpndiag.client.reliable import CODEC, PlainCodec
    from ovpndiag.protocol import PLAIN

    assert CODEC.layout() is wirelayout.control_layout(PLAIN)

    class Extended(layers.OpenVPNControl):
        fields_desc = list(layers.OpenVPNControl.fields_desc) + [IntField("trailing", 9)]

    codec = PlainCodec(wirelayout.ControlLayout(PLAIN, wirelayout.derive(PLAIN, {4: Extended})))
    fields = dict(opcode=4, key_id=2, session_id=0x0102030405060708, acks=[11, 12], remote_session_id=99,
                  message_packet_id=7, trailing=0xCAFE)
    data = codec.build(Extended, fields, b"TLS")
    assert data == bytes(Extended(**fields, wrapping=PLAIN) / Raw(b"TLS"))
    received = codec.read(data)
    assert (received.session_id, received.acks, received.remote_session_id, received.message_packet_id,
            received.payload) == (fields["session_id"], [11, 12], 99, 7, b"TLS")


def test_the_result_api_is_importable_without_scapy_or_tls():
    import subprocess
    import sys

    code = ("import sys\nimport ovpndiag.client as c\nassert c.STAGES == ('reset', 'tls', 'auth', 'push', 'data')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('scapy', 'OpenSSL', 'ssl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert STAGES[-1] == "data" and HandshakeResult("h", 1, "udp").to_dict()["stages"] == []


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _sends(channel, clock, until, step=0.25):  # (exact in binary floating point)
    times = []
    while clock.now <= until:
        if channel.outgoing():
            times.append(round(clock.now, 2))
        clock.now += step
    return times


def test_an_unanswered_packet_is_sent_again_with_backoff_over_udp_only():
    from ovpndiag.client.reliable import ControlChannel
    from ovpndiag.wrap import NoWrapping

    clock = FakeClock()
    channel = ControlChannel(NoWrapping(), 1, "udp", clock=clock)
    channel.reset()
    assert _sends(channel, clock, 12) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5 s doubling, at most 4 s
    assert channel.retransmissions == 5
    clock = FakeClock()
    channel = ControlChannel(NoWrapping(), 1, "tcp", clock=clock)
    channel.reset()
    assert _sends(channel, clock, 12) == [0.0]  # TCP retransmits for us


def test_a_later_packet_acked_sends_the_lost_one_again_at_once():
    from ovpndiag.client.reliable import ControlChannel, Received
    from ovpndiag.wrap import NoWrapping

    clock = FakeClock()
    channel = ControlChannel(NoWrapping(), 1, "udp", clock=clock)
    channel.remote_session_id = 2
    channel.send_bytes(b"a" * 3000)  # three packets: 1, 2, 3
    assert len(channel.outgoing()) == 3
    clock.now = 0.05
    assert channel.outgoing() == []  # not yet due
    channel.receive(Received(5, 0, 2, [2, 3], None, b"", None))  # a P_ACK_V1 for 2 and 3
    again = channel.outgoing()
    assert len(again) == 1 and sorted(channel.unacked) == [1]
    packet, problem = __import__("ovpndiag.layers", fromlist=["from_wire"]).from_wire(again[0])
    assert problem is None and packet.message_packet_id == 1 and bytes(packet.payload) == b"a" * 1100
    assert channel.srtt == pytest.approx(0.05)  # timed from packets sent once


class GarbageInsideTLS:
    """A UDP peer that answers a client reset as a server would (built with the project's
    layers), then answers the ClientHello with a TLS record that is no ServerHello."""

    def __init__(self, answer=b"\x16\x03\x03\x00\x06garbag"):
        from ovpndiag.client.reliable import build
        from ovpndiag.layers import OpenVPNControl, OpenVPNReset, from_wire
        from ovpndiag.protocol import PLAIN

        self.build, self.dissect, self.answer = build, from_wire, answer
        self.layers = (OpenVPNReset, OpenVPNControl, PLAIN)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        reset, control, plain = self.layers
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            packet, problem = self.dissect(data)
            if problem:
                continue
            if packet.opcode == 7:
                answer = self.build(reset(opcode=8, session_id=0xABCDEF, acks=[0], remote_session_id=packet.session_id,
                                          message_packet_id=0, wrapping=plain))
            elif packet.opcode == 4:
                answer = self.build(control(opcode=4, session_id=0xABCDEF, acks=[packet.message_packet_id],
                                            remote_session_id=packet.session_id, message_packet_id=1,
                                            wrapping=plain), self.answer)
            else:
                continue
            try:
                self.sock.sendto(answer, peer)
            except OSError:  # closed by the test meanwhile
                return

    def close(self):
        self.sock.close()


def test_garbage_inside_tls_is_a_tls_error_in_one_line():
    peer = GarbageInsideTLS()
    try:
        result = Client(settings_for("127.0.0.1", peer.port, timeout=2)).run("push")
    finally:
        peer.close()
    assert result.verdict == "tls-error" and [s.ok for s in result.stages] == [True, False]
    assert result.message.startswith("TLS error: ") and "\n" not in result.message
    assert result.stages[1].facts["alerts"][0]["direction"] == "sent"  # we told it why


def test_a_wrong_tls_auth_key_is_silence_within_the_budget(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    started = time.monotonic()
    result = Client(settings_for(server.host, server.port, timeout=2.0,
                                 tls_auth=str(key_path("keys/ta-wrong.key")))).run("push")
    took = time.monotonic() - started
    assert result.verdict == "server-silent" and [s.name for s in result.stages] == ["reset"]
    assert re.fullmatch(rf"no reply from 127\.0\.0\.1:{server.port}/udp to 3 resets in 2\.\d s",
                        result.message), result.message  # sent at 0, 0.5 and 1.5 s
    assert any("tls-auth" in advice for advice in result.advice)
    assert 2.0 <= took < 2.5 and result.exit_sent is None


def test_every_address_is_tried_until_one_answers(servers, monkeypatch):
    """A name with an IPv6 address where nothing listens, then the IPv4 server."""
    from ovpndiag import transport

    server = servers.get(proto="udp")
    closed = free_port("udp", socket.AF_INET6)

    def resolve(host, port, proto, family=None):
        return [transport.Address(socket.AF_INET6, "::1", closed), transport.Address(socket.AF_INET, "127.0.0.1", port)]

    monkeypatch.setattr(transport, "resolve", resolve)
    client = Client(settings_for("vpn.test", server.port))
    result = client.run("push")
    assert result.verdict == "ok" and result.address == f"127.0.0.1:{server.port}"
    assert {packet_from[0] for _, packet_from, _, _, _, sent in client.exchange if sent} == {"::1", "127.0.0.1"}
    assert_server_saw_a_whole_session(server, client, port=[local for _, local, _, _, _, sent in client.exchange
                                                            if sent][-1][1])


def test_a_client_certificate_refused_under_tls_1_2_is_named_so(tmp_path):
    """Under TLS 1.2 our certificate goes out before the server's Finished (the handshake is not
    done yet): silence after it is still the server refusing our certificate."""
    from pki import get_pki
    from servers import pki_server

    pki = get_pki()
    server = pki_server("valid").start()
    try:
        settings = settings_for(server.host, server.port, timeout=2.5, ca=pki.ca, cert=pki.client["other-ca"],
                                key=pki.client_key["other-ca"])
        settings.tls_version_max = "1.2"
        result = Client(settings).run("push")
    finally:
        server.stop()
    assert result.verdict == "client-certificate-rejected", result.message
    assert result.tls is None and result.server_certificate["verified"] is True
    assert "after our certificate" in result.message


def test_an_alert_from_the_server_is_named():
    peer = GarbageInsideTLS(answer=bytes.fromhex("15030300020246"))  # fatal protocol_version (70)
    try:
        result = Client(settings_for("127.0.0.1", peer.port, timeout=2)).run("push")
    finally:
        peer.close()
    assert result.verdict == "client-hello-rejected"
    assert result.message == "the server refused our ClientHello: TLS alert protocol_version"
    assert {"direction": "received", "level": "fatal", "description": "protocol_version"} in \
        result.stages[1].facts["alerts"]


class DropFirstServerTLSPacket(UDPRelay):
    """Loses the server's first P_CONTROL_V1 (the start of its TLS flight), once."""

    def __init__(self, host, port):
        self.lost = 0
        super().__init__(host, port)

    def passes(self, direction, data):
        if direction == "down" and data[0] >> 3 == 4 and not self.lost:
            self.lost += 1
            return False
        return True


def test_a_lost_server_packet_is_resent_at_once_when_we_ack_later_ones(servers):
    """The server's timer would resend it after 2 s; three ACKs of the packet after it make a
    2.6 server resend it at once (reliable.c, N_ACK_RETRANSMIT)."""
    server = servers.get(proto="udp")
    relay = DropFirstServerTLSPacket(server.host, server.port)
    try:
        client = Client(settings_for(relay.host, relay.port))
        result = client.run("push")
    finally:
        relay.close()
    assert relay.lost == 1 and result.verdict == "ok", result.message
    assert client.channel.out_of_order >= 1
    assert result.stage("tls").elapsed < 1.0, result.stage("tls").elapsed  # not 2 s


def test_a_gap_sends_three_acks_of_the_later_packet_at_once():
    from ovpndiag.client.reliable import ControlChannel, Received
    from ovpndiag.layers import from_wire
    from ovpndiag.wrap import NoWrapping

    channel = ControlChannel(NoWrapping(), 1, "udp", clock=FakeClock())
    channel.remote_session_id = 2
    assert channel.receive(Received(4, 0, 2, [], 2, b"later", None)) == b""  # 1 is missing
    acks = [from_wire(packet)[0] for packet in channel.outgoing()]
    assert [(a.opcode, list(a.acks)) for a in acks] == [(5, [2])] * 3
    assert channel.outgoing() == []
    assert channel.receive(Received(4, 0, 2, [], 1, b"first ", None)) == b"first later"


def test_three_server_packets_unacknowledged_are_acked_at_once():
    """A 2.6 server sends at most 6 control packets unacknowledged: a lone ACK held back for
    ACK_DELAY would stall a longer certificate flight. One or two wait for a packet of ours."""
    from ovpndiag.client.reliable import ACK_DELAY, ControlChannel, Received
    from ovpndiag.layers import from_wire
    from ovpndiag.wrap import NoWrapping

    clock = FakeClock()
    channel = ControlChannel(NoWrapping(), 1, "udp", clock=clock)
    channel.remote_session_id = 2
    for packet_id in (1, 2):
        channel.receive(Received(4, 0, 2, [], packet_id, b"x", None))
    assert channel.outgoing() == [] and channel.next_due() == ACK_DELAY
    channel.receive(Received(4, 0, 2, [], 3, b"x", None))
    assert channel.next_due() == 0.0
    acks = [from_wire(packet)[0] for packet in channel.outgoing()]
    assert [(a.opcode, sorted(a.acks)) for a in acks] == [(5, [1, 2, 3])]


def test_a_certificate_flight_longer_than_the_servers_window_does_not_stall(tmp_path):
    """A ~10 KB server certificate: 10 control packets, 6 at most unacknowledged. Our ACK
    goes once 3 have come, not ACK_DELAY after the first (which stalled the flight 2 ms)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ovpndiag.client.reliable import ACK_DELAY
    from pki import get_pki
    from servers import OpenVPNServer

    pki = get_pki()
    ca = x509.load_pem_x509_certificate(open(pki.ca, "rb").read())
    ca_key = serialization.load_pem_private_key(open(pki.ca_key, "rb").read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName(f"host{i:04d}.example.invalid") for i in range(400)]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256()))
    (tmp_path / "big.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "big.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = OpenVPNServer(ca=pki.ca, cert=str(tmp_path / "big.crt"), cert_key=str(tmp_path / "big.key")).start()
    try:
        client = Client(settings_for(server.host, server.port, ca=pki.ca, cert=pki.client["valid"],
                                     key=pki.client_key["valid"]))
        result = client.run("tls")
    finally:
        server.stop()
    assert result.verdict == "ok", result.message
    packets = [(at, data, sent) for at, _, _, _, data, sent in client.exchange]
    tls = [at for at, data, sent in packets if not sent and data[0] >> 3 == 4]
    assert len(tls) >= 8  # longer than the server's window
    ack = next(at for at, data, sent in packets if sent and data[0] >> 3 == 5)
    assert tls[2] <= ack < tls[6]  # the server's 7th packet waited for our ACK ...
    assert ack - tls[0] < ACK_DELAY, ack - tls[0]  # ... which did not wait for the delay
