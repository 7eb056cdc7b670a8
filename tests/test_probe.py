"""The probe against real OpenVPN 2.6 servers on loopback, and against the wrong
kinds of peer: every outcome gets the right verdict, checks and explanation."""

import socket
import time

import pytest

from captures import entry, key_path, openvpn_packets
from ovpndiag import probe as verdicts
from ovpndiag.probe import probe
from ovpndiag.settings import probe_settings
from servers import (DropFirstRelay, ForeignPortReplier, GarbageUDPService, HTTPService, ReplayUDPService,
                     free_port)

TA, TC = str(key_path("keys/ta.key")), str(key_path("keys/tc.key"))
TA_WRONG, TC_WRONG = str(key_path("keys/ta-wrong.key")), str(key_path("keys/tc-wrong.key"))
V2_CLIENT = str(key_path("keys/tcv2-client.key"))

FAST = dict(timeout=2.0, retries=1, retry_interval=1.0)  # resets at 0 and 1 s, the last heard until 2 s


def run(server, **options):
    settings = probe_settings(host=server.host, port=server.port, proto=server.proto, **{**FAST, **options})
    return probe(settings)


def failed_checks(result):
    return [c.name for c in result.checks if not c.ok]


SERVERS_AND_KEYS = [
    (dict(proto="udp"), {}),
    (dict(proto="tcp"), {}),
    (dict(proto="udp", family=6), {}),
    (dict(proto="tcp", family=6, wrapping="tls-auth"), dict(tls_auth=TA)),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA1"), dict(tls_auth=TA)),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA256"), dict(tls_auth=TA, auth="SHA256")),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA512"), dict(tls_auth=TA, auth="sha512", key_direction="1")),
    (dict(proto="udp", wrapping="tls-auth", auth="SHA1", key_direction=None), dict(tls_auth=TA, key_direction="none")),
    (dict(proto="tcp", wrapping="tls-auth", auth="SHA256"), dict(tls_auth=TA, auth="SHA256")),
    (dict(proto="udp", wrapping="tls-crypt"), dict(tls_crypt=TC)),
    (dict(proto="tcp", wrapping="tls-crypt"), dict(tls_crypt=TC)),
    (dict(proto="udp", wrapping="tls-crypt-v2"), dict(tls_crypt_v2=V2_CLIENT)),
]


@pytest.mark.parametrize("server_config,options", SERVERS_AND_KEYS,
                         ids=[f"{s.get('proto')}{s.get('family', 4)}-{s.get('wrapping', 'none')}-"
                              f"{s.get('auth', '')}-{o.get('key_direction', '')}" for s, o in SERVERS_AND_KEYS])
def test_valid_answer_from_every_kind_of_server(servers, server_config, options):
    server = servers.get(**server_config)
    result = run(server, **options)
    assert result.verdict == verdicts.OK, result.message
    assert failed_checks(result) == []
    assert result.reply["opcode"] == "P_CONTROL_HARD_RESET_SERVER_V2" and result.reply["acks"] == [0]
    assert result.rtt is not None and result.rtt < 1.0
    assert "answered in" in result.message and len(result.attempts) == 1
    names = [c.name for c in result.checks]
    assert "echoes our session id" in names and "acknowledges our reset (message packet-id 0)" in names
    if server_config.get("wrapping") == "tls-crypt-v2":
        assert "early negotiation (asks for the WKc again)" in names


def test_wrong_tls_auth_key_is_silence_and_the_server_log_agrees(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    before = server.log_count("packet HMAC authentication failed")
    result = run(server, tls_auth=TA_WRONG)
    assert result.verdict == verdicts.NO_REPLY and len(result.attempts) == 2
    assert "no reply" in result.message
    assert any("packet HMAC authentication failed" in c for c in result.causes)
    assert any("--try-keys" in c for c in result.causes)
    time.sleep(0.2)
    assert server.log_count("packet HMAC authentication failed") > before


def test_wrong_key_direction_is_silence(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    assert run(server, tls_auth=TA, key_direction="0").verdict == verdicts.NO_REPLY


def test_wrong_digest_is_silence_and_the_server_cannot_locate_the_hmac(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA256")
    before = server.log_count("cannot locate HMAC")
    assert run(server, tls_auth=TA, auth="SHA1").verdict == verdicts.NO_REPLY
    time.sleep(0.2)
    assert server.log_count("cannot locate HMAC") > before


def test_wrong_tls_crypt_key_is_silence(servers):
    server = servers.get(proto="udp", wrapping="tls-crypt")
    result = run(server, tls_crypt=TC_WRONG)
    assert result.verdict == verdicts.NO_REPLY and any("tls-crypt unwrap error" in c for c in result.causes)


def test_missing_tls_auth_over_tcp_makes_the_server_close(servers):
    server = servers.get(proto="tcp", wrapping="tls-auth", auth="SHA256")
    result = run(server)
    assert result.verdict == verdicts.CONNECTION_CLOSED
    assert "closed the connection" in result.message and any("key" in c for c in result.causes)


def test_reply_that_verifies_only_with_another_direction_is_named(servers):
    """A bidirectional server accepts a key-direction 0 reset, but answers with the
    key a direction-0 client does not expect: the probe says which one works."""
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1", key_direction=None)
    result = run(server, tls_auth=TA, key_direction="0")
    assert result.verdict == verdicts.BAD_AUTH
    assert failed_checks(result) == ["tls-auth HMAC"]
    assert "verifies as tls-auth SHA1, bidirectional" in result.checks[-1].detail
    assert "HMAC is invalid" in result.message


def test_closed_udp_port_is_icmp_port_unreachable():
    result = probe(probe_settings(host="127.0.0.1", port=free_port("udp"), **FAST))
    assert result.verdict == verdicts.PORT_CLOSED and "nothing listens on that UDP port" in result.message
    assert result.elapsed < 1.0


def test_closed_tcp_port_is_refused():
    result = probe(probe_settings(host="127.0.0.1", port=free_port("tcp"), proto="tcp", **FAST))
    assert result.verdict == verdicts.PORT_CLOSED and "TCP connection refused" in result.message


def test_udp_service_answering_garbage_is_not_openvpn():
    service = GarbageUDPService()
    try:
        result = probe(probe_settings(host="127.0.0.1", port=service.port, **FAST))
        assert result.verdict == verdicts.NOT_OPENVPN
        assert "'hello, this is not Open" in result.message
        result = probe(probe_settings(host="127.0.0.1", port=service.port, tls_auth=TA, **FAST))
        assert result.verdict == verdicts.NOT_OPENVPN
    finally:
        service.close()


def test_tcp_service_speaking_http_is_not_openvpn():
    service = HTTPService()
    try:
        result = probe(probe_settings(host="127.0.0.1", port=service.port, proto="tcp", **FAST))
        assert result.verdict == verdicts.NOT_OPENVPN and "HTTP/1.1 400" in result.message
        assert any("another service" in c for c in result.causes)
    finally:
        service.close()


def test_a_real_reset_for_another_session_is_a_wrong_reply():
    capture = entry("udp-plain")
    server_reset = [p.data for p in openvpn_packets(capture) if p.data[0] >> 3 == 8][0]
    service = ReplayUDPService(server_reset)
    try:
        result = probe(probe_settings(host="127.0.0.1", port=service.port, **FAST))
        assert result.verdict == verdicts.WRONG_REPLY
        assert failed_checks(result) == ["echoes our session id"]
    finally:
        service.close()


def test_replies_from_another_port_are_ignored():
    capture = entry("udp-plain")
    server_reset = [p.data for p in openvpn_packets(capture) if p.data[0] >> 3 == 8][0]
    service = ForeignPortReplier(server_reset)
    try:
        result = probe(probe_settings(host="127.0.0.1", port=service.port, timeout=2, retries=1, retry_interval=0.5))
        assert service.answered == 2 and result.verdict == verdicts.NO_REPLY
    finally:
        service.close()


def test_unresolvable_name():
    result = probe(probe_settings(host="no-such-host.invalid", **FAST))
    assert result.verdict == verdicts.UNRESOLVABLE and "cannot resolve no-such-host.invalid" in result.message
    assert result.attempts == []


def test_every_address_is_tried_in_order_until_one_answers(servers, monkeypatch):
    """A name with an IPv6 address where nothing listens, then the IPv4 server.
    (The name service is the one thing replaced here: no test host name
    resolves to both families on every machine.)"""
    from ovpndiag import transport

    server = servers.get(proto="udp")
    closed_v6 = free_port("udp", socket.AF_INET6)
    real_resolve = transport.resolve

    def resolve(host, port, proto, family=None):
        both = [transport.Address(socket.AF_INET6, "::1", closed_v6), transport.Address(socket.AF_INET, "127.0.0.1", port)]
        return [a for a in both if family in (None, {socket.AF_INET: 4, socket.AF_INET6: 6}[a.family])]

    monkeypatch.setattr(transport, "resolve", resolve)
    result = probe(probe_settings(host="vpn.test", port=server.port, **FAST))
    assert result.verdict == verdicts.OK and result.address == f"127.0.0.1:{server.port}"
    assert [a.outcome for a in result.attempts] == ["refused", "reply"]
    result6 = probe(probe_settings(host="vpn.test", port=server.port, family=6, **FAST))
    assert result6.verdict == verdicts.PORT_CLOSED and result6.addresses == [f"[::1]:{closed_v6}"]
    monkeypatch.setattr(transport, "resolve", real_resolve)


def test_answer_after_a_lost_reset_counts_as_retried(servers):
    server = servers.get(proto="udp")
    relay = DropFirstRelay(server.host, server.port)
    try:
        result = probe(probe_settings(host="127.0.0.1", port=relay.port, timeout=4, retries=2, retry_interval=0.5))
        assert result.verdict == verdicts.OK and result.retried
        assert [a.outcome for a in result.attempts] == ["timeout", "reply"]
    finally:
        relay.close()


def test_timeout_is_the_whole_budget():
    port = free_port("udp")
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", port))  # receives, never answers
    try:
        started = time.monotonic()
        result = probe(probe_settings(host="127.0.0.1", port=port, timeout=1.0, retries=5, retry_interval=0.4))
        assert time.monotonic() - started < 1.3
        assert result.verdict == verdicts.NO_REPLY and len(result.attempts) == 3
    finally:
        blackhole.close()


def test_profile_supplies_remote_port_proto_and_inline_keys(servers, tmp_path):
    server = servers.get(proto="tcp", wrapping="tls-auth", auth="SHA256")
    profile = tmp_path / "office.ovpn"
    profile.write_text(f"client\nremote {server.host} {server.port} tcp-client\nauth SHA256\nkey-direction 1\n"
                       f"<tls-auth>\n{key_path('keys/ta.key').read_text()}</tls-auth>\n")
    result = probe(probe_settings(config=str(profile), **FAST))
    assert result.verdict == verdicts.OK and result.proto == "tcp"
    # a command-line option wins over the profile
    result = probe(probe_settings(config=str(profile), auth="SHA1", **FAST))
    assert result.verdict == verdicts.CONNECTION_CLOSED


def test_result_json_has_no_key_material(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    import json

    text = json.dumps(run(server, tls_auth=TA).to_dict())
    key = probe_settings(host="x", tls_auth=TA).wrapper.key
    assert not any(slot[:6].hex() in text for slot in (key.hmac(0), key.hmac(1), key.cipher(0), key.cipher(1)))


def test_without_a_key_silence_says_the_server_may_need_one(servers):
    """No key given: the advice is to give one - not that a key's direction or digest
    differs, nor --try-keys, which needs a key."""
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    result = run(server)
    assert result.verdict == verdicts.NO_REPLY
    assert any("the server may need a key" in c and "--tls-auth/--tls-crypt" in c for c in result.causes)
    assert not any("differs" in c or "--try-keys finds" in c for c in result.causes), result.causes


def test_rate_limited_resets_are_named_as_a_cause(servers):
    """A server that answers one new session a minute: the second probe meets silence,
    and its causes name the rate limit (which the server's log confirms)."""
    server = servers.get(proto="udp", extra=("--connect-freq-initial", "1", "60"))
    settings = dict(timeout=1.0, retries=0, retry_interval=1.0)
    results = [run(server, **settings) for _ in range(2)]
    assert [r.verdict for r in results] == [verdicts.OK, verdicts.NO_REPLY]
    assert any("--connect-freq-initial" in c for c in results[1].causes)
    time.sleep(0.2)
    assert server.log_count("connect-freq-initial 1 60 rate limit exceeded") >= 1


def test_rate_limits_are_not_blamed_where_they_cannot_be():
    """A closed port answers with ICMP: no rate limit involved."""
    result = probe(probe_settings(host="127.0.0.1", port=free_port("udp"), **FAST))
    assert result.verdict == verdicts.PORT_CLOSED
    assert not any("connect-freq" in c for c in result.causes)


def test_a_host_given_with_a_profile_keeps_the_profiles_port_and_proto(servers, tmp_path):
    server = servers.get(proto="tcp", wrapping="tls-auth", auth="SHA256")
    profile = tmp_path / "office.ovpn"
    profile.write_text(f"client\nremote vpn.example.invalid {server.port} tcp-client\nauth SHA256\n"
                       f"key-direction 1\ntls-auth {key_path('keys/ta.key')}\n")
    result = probe(probe_settings(host=server.host, config=str(profile), **FAST))
    assert (result.verdict, result.port, result.proto) == (verdicts.OK, server.port, "tcp"), result.message


def test_the_remote_named_on_the_command_line_gives_its_own_port(servers, tmp_path):
    server = servers.get(proto="udp")
    profile = tmp_path / "two.ovpn"
    profile.write_text(f"client\nremote vpn1.example.invalid 1\nremote {server.host} {server.port} udp\n")
    result = probe(probe_settings(host=server.host, config=str(profile), **FAST))
    assert result.verdict == verdicts.OK and result.port == server.port


@pytest.mark.parametrize("secret", ["secret static.key\n", "<secret>\n-----BEGIN OpenVPN Static key V1-----\n"
                                                             "-----END OpenVPN Static key V1-----\n</secret>\n"])
def test_a_static_key_profile_has_nothing_to_probe(tmp_path, secret):
    from ovpndiag.settings import SettingsError

    profile = tmp_path / "p2p.ovpn"
    profile.write_text(f"remote 127.0.0.1 1194\ndev tun\n{secret}")
    with pytest.raises(SettingsError, match=r"p2p.ovpn:3: 'secret' is static-key mode: it has no TLS handshake"):
        probe_settings(config=str(profile))
