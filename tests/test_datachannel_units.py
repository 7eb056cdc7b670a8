"""The data channel's pieces against independent references: the TLS 1.0 PRF against
OpenSSL's vectors, AEAD packets against a construction written here with the
`cryptography` primitives, ICMP against Scapy's IP layer, and the stage against an
in-memory peer for what a real server cannot be made to do (forged and replayed packets)."""

import struct
import time
import types

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ovpndiag.client import datachannel as dc
from ovpndiag.client.datachannel import (
    DataChannel, DataChannelError, ReplayWindow, icmp_echo_request, openvpn_prf_key2,
    parse_icmp_echo_reply, tls1_prf,
)

CIPHERS = ["AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305"]
KEY2 = bytes((i * 7 + 3) % 256 for i in range(256))


# --- the PRF ---------------------------------------------------------------------------------

# OpenSSL's test/recipes/30-test_evp_data/evpkdf_tls11_prf.txt (NIST CAVP vectors for the TLS 1.0/1.1 PRF):
# the seed is label | client_random | server_random for the master secret, label | server | client after.
NIST_MASTER = dict(
    secret="bded7fa5c1699c010be23dd06ada3a48349f21e5f86263d512c0c5cc379f0e780ec55d9844b2f1db02a96453513568d0",
    seed=b"master secret" + bytes.fromhex("e5acaf549cd25c22d964c0d930fa4b5261d2507fad84c33715b7b9a864020693"
                                          "135e4d557fdf3aa6406d82975d5c606a9734c9334b42136e96990fbd5358cdb2"),
    out="2f6962dfbc744c4b2138bb6b3d33054c5ecc14f24851d9896395a44ab3964efc2090c5bf51a0891209f46c1e1e998f62")
NIST_EXPANSION = dict(
    secret=NIST_MASTER["out"],
    seed=b"key expansion" + bytes.fromhex("67267e650eb32444119d222a368c191af3082888dc35afe8368e638c828874be"
                                          "d58a7b1cd4fedaa232159df652ce188f9d997e061b9bf48e83b62990440931f6"),
    out="3088825988e77fce68d19f756e18e43eb7fe672433504feaf99b3c503d9091b164f166db301d70c9fc0870b4a94563907bee1a61"
        "fb786cb717576890bcc51cb9ead97e01d0a2fea99c953377b195205ff07b369589178796edc963fd80fdbe518a2fc1c35c18ae8d")


@pytest.mark.parametrize("vector", [NIST_MASTER, NIST_EXPANSION], ids=["master", "expansion"])
def test_tls1_prf_matches_the_nist_vectors(vector):
    out = bytes.fromhex(vector["out"])
    assert tls1_prf(bytes.fromhex(vector["secret"]), vector["seed"], len(out)) == out


def test_tls1_prf_with_an_odd_secret_overlaps_the_halves():
    # `openssl kdf -keylen 20 -kdfopt digest:MD5-SHA1 -kdfopt secret:secret -kdfopt seed:labelseed TLS1-PRF`
    # (also the textbook "secret"/"label"/"seed" example), and a 5-byte secret the same way
    assert tls1_prf(b"secret", b"labelseed", 20).hex() == "b5baf4722b91851a8816d22ebd8c1d8cc2e94d55"
    assert tls1_prf(bytes.fromhex("0102030405"), b"labelseed", 20).hex() == \
        "3f3064bbbf4ed9aa52f11cc12dbd3f5b0d3086b3"


def test_openvpn_key_expansion_matches_openssl():
    # Both steps computed with `openssl kdf ... TLS1-PRF` (the PRF OpenVPN itself calls) over OpenVPN's labels
    # and seed order (ssl.c generate_key_expansion_openvpn_prf): randoms client first, then the session ids.
    key2 = openvpn_prf_key2(bytes(range(48)), bytes(range(100, 132)), bytes(range(200, 232)),
                            bytes(range(32, 64)), bytes(range(132, 164)),
                            bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8"))
    assert key2.hex() == (
        "fa696401ee1b99f43a09b6da1c1caaf7a588a28680f877c2290a6bb0bb8f01eba8c7bdabfd035d63efab79644483f013"
        "35cac96e6f3bf2d6fcfa318a2db7f56625dfbc8af25141238c7a51a29a18f5cd7194b3f147925d2f1b40db75036edb9a"
        "b93ea82828c1f3849298aaeaf72f72ce11dcda44f79f811f4f200d43c6fd49843b33c368e0fe28a64bd15167e38a6959"
        "a0bd9806279ced3a11a7866ce6998101920bf3aa01e7f54cd40fe30ab60b7580b26d9422d43e977dddedd3deb7075863"
        "3a153c986454701bb8aa6c47bd3b9b054882f5cd1f2ec2d41fe07aee3b8176466fa44b5f932b3f4a08601ca0a6e98861"
        "7a730e07c254e6a7fcbc447b01afbbfc")


# --- AEAD packets --------------------------------------------------------------------------------

def _reference_open(packet, key2, cipher, v2, receiver_is_server):
    """An AEAD data packet opened the way crypto.c lays it out, written without the module."""
    key = key2[0:128] if receiver_is_server else key2[128:256]  # the client sends with key 0
    size = {"AES-128-GCM": 16, "AES-256-GCM": 32, "CHACHA20-POLY1305": 32}[cipher]
    aead = (ChaCha20Poly1305 if cipher.startswith("CHACHA") else AESGCM)(key[:size])
    header_len = 4 if v2 else 1
    pid = packet[header_len:header_len + 4]
    tag, ciphertext = packet[header_len + 4:header_len + 20], packet[header_len + 20:]
    ad = (packet[:4] if v2 else b"") + pid
    return struct.unpack("!I", pid)[0], aead.decrypt(pid + key[64:72], ciphertext + tag, ad)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("peer_id", [None, 0, 0xABCDEF])
def test_sealed_packets_have_openvpns_layout(cipher, peer_id):
    channel = DataChannel(KEY2, cipher, peer_id=peer_id, key_id=2)
    first, second = channel.seal(b"hello"), channel.seal(b"world!")
    if peer_id is None:
        assert first[0] == 6 << 3 | 2 and len(first) == 1 + 4 + 16 + 5
    else:
        assert first[0] == 9 << 3 | 2 and first[1:4] == peer_id.to_bytes(3, "big") and len(first) == 4 + 4 + 16 + 5
    assert _reference_open(first, KEY2, cipher, peer_id is not None, True) == (1, b"hello")
    assert _reference_open(second, KEY2, cipher, peer_id is not None, True) == (2, b"world!")


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("peer_id", [None, 7])
def test_round_trip_between_client_and_server(cipher, peer_id):
    client = DataChannel(KEY2, cipher, peer_id=peer_id)
    server = DataChannel(KEY2, cipher, peer_id=peer_id, server=True)
    for n in range(3):
        assert server.open(client.seal(b"up %d" % n)) == b"up %d" % n
        assert client.open(server.seal(b"down %d" % n)) == b"down %d" % n
    # a client cannot open its own packets: each direction has its own key
    with pytest.raises(DataChannelError, match="tag does not verify"):
        client.open(client.seal(b"mirror"))


def test_opening_refuses_tampering_replay_and_the_wrong_header():
    client = DataChannel(KEY2, "AES-256-GCM", peer_id=5)
    server = DataChannel(KEY2, "AES-256-GCM", peer_id=5, server=True)
    packet = server.seal(b"payload")
    for position in (0 + 4, 4 + 4, 4 + 4 + 16):  # packet-id, tag, ciphertext
        forged = bytearray(packet)
        forged[position] ^= 1
        with pytest.raises(DataChannelError):
            client.open(bytes(forged))
    # the peer-id is authenticated too, and checked before
    with pytest.raises(DataChannelError, match="peer-id 6"):
        client.open(packet[:3] + b"\x06" + packet[4:])
    with pytest.raises(DataChannelError, match="key_id 1"):
        client.open(bytes([packet[0] | 1]) + packet[1:])
    with pytest.raises(DataChannelError, match="P_DATA_V1"):
        client.open(DataChannel(KEY2, "AES-256-GCM", server=True).seal(b"v1"))
    with pytest.raises(DataChannelError, match="too short"):
        client.open(packet[:20])
    assert client.open(packet) == b"payload"
    with pytest.raises(DataChannelError, match="replayed"):
        client.open(packet)


def test_v1_and_v2_authenticate_different_data():
    """V2 puts its 4-byte header in the AD, V1 nothing: re-heading a packet must fail."""
    v1 = DataChannel(KEY2, "AES-128-GCM", server=True).seal(b"x")
    client_v2 = DataChannel(KEY2, "AES-128-GCM", peer_id=0)
    with pytest.raises(DataChannelError, match="tag"):
        client_v2.open(bytes([9 << 3]) + b"\0\0\0" + v1[1:])


def test_replay_window():
    window = ReplayWindow(size=8)
    for number in (1, 3, 2, 10):
        window.check(number)
        window.record(number)
    for number in (1, 2, 3, 10):
        with pytest.raises(DataChannelError):
            window.check(number)  # 1 is also older than the window now
    window.check(9)  # never seen, inside the window
    window.check(4)
    with pytest.raises(DataChannelError, match="older"):
        window.check(2)
    with pytest.raises(DataChannelError, match="packet-id 0"):
        window.check(0)
    window.record(100)  # a jump past the window forgets the bitmap but not the highest
    with pytest.raises(DataChannelError):
        window.check(100)
    window.check(99)


def test_the_magic_messages_are_openvpns():
    # ping.c ping_string and occ.c occ_magic, OCC_EXIT = 6 (occ.h)
    assert dc.PING_MAGIC == bytes([0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb,
                                   0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48])
    assert dc.EXIT_NOTIFY == bytes([0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81,
                                    0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c, 6])


# --- ICMP ------------------------------------------------------------------------------------------

def test_echo_request_is_what_scapy_reads_with_valid_checksums():
    from scapy.layers.inet import ICMP, IP

    raw = icmp_echo_request("10.8.0.2", "10.8.0.1", 0x1234, 7, b"abcdefghi")  # odd length on purpose
    packet = IP(raw)
    assert (packet.src, packet.dst, packet.ttl, packet.proto, packet.len) == ("10.8.0.2", "10.8.0.1", 64, 1, len(raw))
    assert (packet[ICMP].type, packet[ICMP].code, packet[ICMP].id, packet[ICMP].seq) == (8, 0, 0x1234, 7)
    assert bytes(packet[ICMP].payload) == b"abcdefghi"
    rebuilt = IP(raw)
    del rebuilt.chksum, rebuilt[ICMP].chksum
    assert bytes(rebuilt) == raw  # Scapy's checksums are the same as ours


def test_echo_reply_parsing_checks_type_and_checksums():
    from scapy.layers.inet import ICMP, IP

    reply = bytes(IP(src="10.8.0.1", dst="10.8.0.2") / ICMP(type=0, id=99, seq=3) / b"payload")
    assert parse_icmp_echo_reply(reply) == ("10.8.0.1", "10.8.0.2", 99, 3, b"payload")
    with_options = bytes(IP(src="10.8.0.1", dst="10.8.0.2", options=b"\x01\x01\x01\x00") /
                         ICMP(type=0, id=99, seq=3) / b"p")
    assert parse_icmp_echo_reply(with_options) == ("10.8.0.1", "10.8.0.2", 99, 3, b"p")
    assert parse_icmp_echo_reply(bytes(IP(src="10.8.0.1", dst="10.8.0.2") / ICMP(type=8, id=99, seq=3))) is None
    for position in (11, len(reply) - 1):  # IP header checksum, ICMP payload
        broken = bytearray(reply)
        broken[position] ^= 0x40
        assert parse_icmp_echo_reply(bytes(broken)) is None
    assert parse_icmp_echo_reply(bytes(IP(dst="10.8.0.2", proto=17) / (b"\0" * 20))) is None  # not ICMP
    assert parse_icmp_echo_reply(reply[:27]) is None


# --- the stage against an in-memory peer -----------------------------------------------------------

class FakePeer:
    """Stands for the Client and a server behind it: answers echoes, and can add a keepalive
    ping, a forged packet, a replayed one or a wrong answer before the right one."""

    def __init__(self, extras=(), answer=True, **push):
        self.server = DataChannel(KEY2, "CHACHA20-POLY1305", peer_id=3, server=True)
        self.push_reply = {"cipher": "CHACHA20-POLY1305", "peer_id": 3, "protocol_flags": ["cc-exit", "tls-ekm"],
                           "ifconfig": ["10.9.0.2", "255.255.255.0"], "route_gateway": "10.9.0.1", **push}
        self.settings = types.SimpleNamespace(count=2, ping_target=None, data_ciphers=[],
                                              probe=types.SimpleNamespace(proto="udp", retries=0))
        self.proto, self.key_derivation = "udp", "tls-ekm"
        self.deadline = time.monotonic() + 5
        self.extras, self.answer, self.queue, self.seen, self.exported = list(extras), answer, [], [], []

    def elapsed(self):
        return 0.5

    def tls_export(self, label, length):
        self.exported.append((label, length))
        return KEY2

    def transport_send(self, packet):
        plaintext = self.server.open(packet)
        self.seen.append(plaintext)
        if plaintext[:1] != b"\x45":  # not an IPv4 packet: the exit notification
            return
        for extra in self.extras:
            self.queue.append(extra(self.server, plaintext))
        if self.answer:
            self.queue.append(self.server.seal(_as_reply(plaintext)))

    def transport_recv(self, timeout):
        if self.queue:
            return self.queue.pop(0)
        time.sleep(min(timeout, 0.01))
        return None


def _as_reply(request):
    """The kernel's answer to an echo request: addresses swapped, type 0, checksums redone."""
    from scapy.layers.inet import ICMP, IP

    packet = IP(request)
    return bytes(IP(src=packet.dst, dst=packet.src) / ICMP(type=0, id=packet[ICMP].id, seq=packet[ICMP].seq) /
                 bytes(packet[ICMP].payload))


def test_stage_counts_answered_echoes_and_ignores_keepalive():
    ping = lambda server, request: server.seal(dc.PING_MAGIC)  # noqa: E731
    peer = FakePeer(extras=[ping])
    stage = dc.run_data_stage(peer)
    assert stage.ok and stage.name == "data"
    assert peer.exported == [("EXPORTER-OpenVPN-datakeys", 256)]
    facts = stage.facts
    assert (facts["cipher"], facts["key_derivation"], facts["sent"], facts["received"]) == \
        ("CHACHA20-POLY1305", "tls-ekm", 2, 2)
    assert facts["keepalive_pings"] == 2 and facts["format"] == "P_DATA_V2" and facts["loss"] == 0.0
    assert 0 < facts["rtt"] < 0.5
    assert (facts["source"], facts["target"]) == ("10.9.0.2", "10.9.0.1")
    assert "2/2 echoes to 10.9.0.1 answered" in stage.detail and "verdict" not in facts


def test_stage_counts_only_authentic_matching_replies(monkeypatch):
    def forged(server, request):
        packet = bytearray(server.seal(_as_reply(request)))
        packet[-1] ^= 1
        return bytes(packet)

    def wrong_ident(server, request):
        reply = bytearray(_as_reply(request))
        reply[24] ^= 0xFF  # the ICMP id (checksum now wrong too; fix it the way a real peer would)
        from scapy.layers.inet import ICMP, IP

        packet = IP(bytes(reply))
        del packet.chksum, packet[ICMP].chksum
        return server.seal(bytes(packet))

    monkeypatch.setattr(dc, "ECHO_INTERVAL", 0.2)
    peer = FakePeer(extras=[forged, wrong_ident], answer=False)
    peer.settings.count = 1
    stage = dc.run_data_stage(peer)
    assert not stage.ok
    assert (stage.facts["sent"], stage.facts["received"], stage.facts["rejected"]) == (1, 0, 1)
    assert "tag does not verify" in stage.detail and stage.facts["verdict"] == "data-keys-mismatch"


def test_stage_sends_more_echoes_over_udp_when_none_was_answered(monkeypatch):
    peer = FakePeer(answer=False)
    peer.settings.count, peer.settings.probe.retries = 1, 2
    monkeypatch.setattr(dc, "ECHO_INTERVAL", 0.05)
    stage = dc.run_data_stage(peer)
    assert not stage.ok and (stage.facts["sent"], stage.facts["received"], stage.facts["loss"]) == (3, 0, 100.0)
    assert "nothing came back" in stage.detail and stage.facts["verdict"] == "data-one-way"


def test_exit_notify_goes_through_the_data_channel():
    peer = FakePeer()
    assert dc.send_exit_notify(peer)
    assert peer.seen == [dc.EXIT_NOTIFY] * 3  # UDP: three copies, each its own packet-id
    peer.proto = "tcp"
    peer.seen.clear()
    assert dc.send_explicit_exit_notify(peer) and peer.seen == [dc.EXIT_NOTIFY]
    before_push = FakePeer()
    before_push.push_reply = None
    assert not dc.send_exit_notify(before_push) and before_push.seen == []


def test_a_lost_connection_ends_the_stage_with_what_was_measured():
    from ovpndiag.transport import Reset

    peer = FakePeer()
    peer.settings.count = 3
    answered = []

    def recv(timeout):
        if peer.queue and not answered:
            answered.append(1)
            return peer.queue.pop(0)
        raise Reset("connection reset by the server")

    peer.transport_recv = recv
    stage = dc.run_data_stage(peer)
    assert not stage.ok and "connection reset by the server" in stage.detail
    assert (stage.facts["sent"], stage.facts["received"]) == (2, 1) and peer.data_result is stage.facts
    assert stage.facts["verdict"] == "connection-reset"


def test_prf_is_used_when_tls_ekm_is_not_agreed():
    pre, r = bytes(range(48)), [bytes([i]) * 32 for i in range(4)]
    peer = FakePeer(protocol_flags=["cc-exit"])
    peer.key_derivation = "prf"
    peer.key_exchange = types.SimpleNamespace(client_pre_master=pre, client_random1=r[0], client_random2=r[1],
                                              server_random1=r[2], server_random2=r[3])
    peer.session_id, peer.remote_session_id = b"c" * 8, b"s" * 8
    key2 = openvpn_prf_key2(pre, r[0], r[2], r[1], r[3], b"c" * 8, b"s" * 8)
    peer.server = DataChannel(key2, "CHACHA20-POLY1305", peer_id=3, server=True)
    stage = dc.run_data_stage(peer)
    assert stage.ok and stage.facts["key_derivation"] == "prf" and peer.exported == []


def test_targets_come_from_the_push_reply_or_the_user():
    peer = FakePeer()
    assert dc._addresses(peer) == ("10.9.0.2", "10.9.0.1")
    peer.push_reply = {"ifconfig": ["10.8.0.6", "10.8.0.5"]}  # net30 / p2p: the remote end
    assert dc._addresses(peer) == ("10.8.0.6", "10.8.0.5")
    peer.settings.ping_target = "192.0.2.7"
    assert dc._addresses(peer) == ("10.8.0.6", "192.0.2.7")
    peer.push_reply = {"ifconfig": ["10.8.0.6", "255.255.255.0"]}
    peer.settings.ping_target = None
    assert dc._addresses(peer) == ("10.8.0.6", None)


def test_key_export_is_recognised_in_both_ways_a_2_6_server_announces_it():
    """2.6 servers push "protocol-flags ... tls-ekm" to clients announcing CC_EXIT_NOTIFY in IV_PROTO,
    "key-derivation tls-ekm" to the others (seen against 2.6.14); the Client's own decision wins."""
    peer = types.SimpleNamespace(push_reply={"protocol_flags": ["cc-exit", "tls-ekm"]})
    assert dc.key_derivation(peer) == "tls-ekm"
    peer.push_reply = {"key-derivation": "tls-ekm"}
    assert dc.key_derivation(peer) == "tls-ekm"
    peer.push_reply = {"protocol_flags": ["cc-exit"]}
    assert dc.key_derivation(peer) == "prf"
    peer.push_reply, peer.key_derivation = {"key_derivation": "tls-ekm"}, "prf"  # we did not announce it
    assert dc.key_derivation(peer) == "prf"


# --- compression framing (compstub.c, comp.h) ---------------------------------------------------

def test_compression_framings_are_openvpns():
    ip = bytes.fromhex("4500001c") + b"rest"
    assert dc.frame(ip, "lzo") == b"\xfa" + ip  # NO_COMPRESS_BYTE first
    assert dc.frame(ip, "swap") == b"\xfb" + ip[1:] + b"\x45"  # NO_COMPRESS_BYTE_SWAP, head byte to the tail
    assert dc.frame(ip, "v2") == ip  # v2: unchanged unless it starts with the indicator byte
    assert dc.frame(b"\x50abc", "v2") == b"\x50\x00\x50abc"
    assert dc.frame(ip, "none") == ip
    for framing in dc.FRAMINGS:
        for payload in (ip, b"\x50abc", dc.PING_MAGIC, dc.EXIT_NOTIFY, b"\xfa\xfb"):
            assert dc.unframe(dc.frame(payload, framing), framing) == payload
    for framing, compressed in (("lzo", b"\x66data"), ("swap", b"\x69data"), ("v2", b"\x50\x01data")):
        with pytest.raises(dc.UnreadablePayload):
            dc.unframe(compressed, framing)


@pytest.mark.parametrize("option,framing", [
    ("comp-lzo", "lzo"), ("comp-lzo no", "lzo"), ("comp-lzo adaptive", "lzo"), ("compress", "swap"),
    ("compress stub", "swap"), ("compress lz4", "swap"), ("compress lzo", "lzo"), ("compress stub-v2", "v2"),
    ("compress lz4-v2", "v2"), ("compress migrate", "none"), (None, "none"), ("", "none"),
])
def test_compression_framing_of_each_option(option, framing):
    assert dc.compression_framing(option) == framing


def test_the_pushed_compression_option_wins_over_the_profiles():
    peer = FakePeer()
    peer.settings.compress = "comp-lzo no"
    assert dc._compression(peer) == "lzo"
    peer.push_reply["raw"] = ["route-gateway 10.9.0.1", "compress stub-v2"]
    assert dc._compression(peer) == "v2"
    peer.settings.compress = None
    peer.push_reply["raw"] = ["compress lz4", "compress"]
    assert dc._compression(peer) == "swap"


def test_framed_channels_round_trip_and_refuse_the_wrong_framing():
    client = DataChannel(KEY2, "AES-256-GCM", peer_id=1, compression="swap")
    server = DataChannel(KEY2, "AES-256-GCM", peer_id=1, server=True, compression="swap")
    assert server.open(client.seal(dc.PING_MAGIC)) == dc.PING_MAGIC
    assert _reference_open(client.seal(b"\x45abc"), KEY2, "AES-256-GCM", True, True)[1] == b"\xfbabc\x45"
    unframed = DataChannel(KEY2, "AES-256-GCM", peer_id=1, server=True)
    assert unframed.open(client.seal(b"\x45abc")) == b"\xfbabc\x45"
    with pytest.raises(DataChannelError, match="framing"):
        DataChannel(KEY2, "AES-256-GCM", compression="lz4")


def test_fragment_header_whole_packets_only():
    # fragment.c: a packet sent whole gets fragment_prepend_flags(FRAG_WHOLE, 0, 0, 0) - four zero bytes
    assert dc.add_fragment_header(b"\x45abc") == b"\0\0\0\0\x45abc"
    assert dc.strip_fragment_header(b"\0\0\0\0\x45abc") == b"\x45abc"
    for flags in (1, 2, 1 << 2, 1 << 10):  # FRAG_YES_NOTLAST, FRAG_YES_LAST, a seq_id, a frag_id
        with pytest.raises(dc.UnreadablePayload):
            dc.strip_fragment_header(struct.pack("!I", flags) + b"x")
    with pytest.raises(DataChannelError, match="too short"):
        dc.strip_fragment_header(b"\0\0")
    client = DataChannel(KEY2, "AES-128-GCM", peer_id=0, compression="lzo", fragment=True)
    server = DataChannel(KEY2, "AES-128-GCM", peer_id=0, server=True, compression="lzo", fragment=True)
    packet = client.seal(b"\x45abc")
    assert _reference_open(packet, KEY2, "AES-128-GCM", True, True)[1] == b"\0\0\0\0\xfa\x45abc"  # fragment outside
    assert server.open(packet) == b"\x45abc"


def test_authentic_packets_we_cannot_read_still_show_the_channel_works(monkeypatch):
    def compressed(server, request):  # what a comp-lzo server sends for a big, compressible packet
        server.compression = "none"
        packet = server.seal(b"\x66" + b"lzo-compressed bytes")
        server.compression = "lzo"
        return packet

    monkeypatch.setattr(dc, "ECHO_INTERVAL", 0.2)
    peer = FakePeer(extras=[compressed], answer=False, raw=["comp-lzo no"])
    peer.server = DataChannel(KEY2, "CHACHA20-POLY1305", peer_id=3, server=True, compression="lzo")
    peer.settings.count = 1
    stage = dc.run_data_stage(peer)
    assert not stage.ok and stage.facts["compression"] == "lzo"
    assert (stage.facts["unreadable"], stage.facts["rejected"], stage.facts["verdict"]) == (1, 0, "echo-unanswered")


def test_nothing_to_ping_without_addresses():
    peer = FakePeer(route_gateway=None)
    stage = dc.run_data_stage(peer)
    assert not stage.ok and "no route-gateway: give --ping-target" in stage.detail and peer.seen == []
    peer = FakePeer(route_gateway="dhcp")
    assert "'dhcp' (a bridged tap server)" in dc.run_data_stage(peer).detail and peer.seen == []
    peer = FakePeer(ifconfig=None)
    assert "no ifconfig address for us" in dc.run_data_stage(peer).detail and peer.seen == []
    peer = FakePeer()  # an IPv6 target, but the tunnel gave us only an IPv4 address
    peer.settings.ping_target = "fd00::1"
    stage = dc.run_data_stage(peer)
    assert not stage.ok and "no address of that family" in stage.detail and peer.seen == []
    peer = FakePeer(ifconfig_ipv6=["fd00::1000/64", "fd00::1"])
    peer.settings.ping_target = "fd00::1"
    peer.server_key_message = types.SimpleNamespace(options="V4,dev-type tap,link-mtu 1573")
    stage = dc.run_data_stage(peer)
    assert not stage.ok and "not done here" in stage.detail and peer.seen == []


def test_an_unsupported_cipher_is_one_clear_line():
    peer = FakePeer(cipher="BF-CBC")
    stage = dc.run_data_stage(peer)
    assert not stage.ok and stage.detail.startswith("no data channel: cipher BF-CBC is not supported")
    assert not dc.send_exit_notify(peer)


# --- dev tap: Ethernet and ARP, checked with Scapy's layers ------------------------------------------

def test_ethernet_link_speaks_arp_as_scapy_reads_it():
    from scapy.layers.l2 import ARP, Ether

    link = dc.EthernetLink("10.8.0.2", "10.8.0.1")
    assert link.mac[0] & 0x03 == 0x02  # unicast, locally administered
    request = Ether(link.arp_request())
    assert (request.dst, request.type, request[ARP].op, request[ARP].psrc, request[ARP].pdst) == \
        ("ff:ff:ff:ff:ff:ff", 0x0806, 1, "10.8.0.2", "10.8.0.1")
    assert request.src == request[ARP].hwsrc == link.mac.hex(":")
    # an answer from somebody else, or about another address, teaches nothing
    other = bytes(Ether(dst=link.mac.hex(":"), src="02:00:00:00:00:09") /
                  ARP(op=2, hwsrc="02:00:00:00:00:09", psrc="10.8.0.9", hwdst=link.mac.hex(":"), pdst="10.8.0.2"))
    assert link.receive(other) == (None, None) and link.target_mac is None
    answer = bytes(Ether(dst=link.mac.hex(":"), src="02:00:00:00:00:01") /
                   ARP(op=2, hwsrc="02:00:00:00:00:01", psrc="10.8.0.1", hwdst=link.mac.hex(":"), pdst="10.8.0.2"))
    assert link.receive(answer) == (None, None) and link.target_mac == bytes.fromhex("020000000001")
    # the server's kernel asking for us gets our MAC
    asked = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") /
                  ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="10.8.0.1", pdst="10.8.0.2"))
    ip, reply = link.receive(asked)
    reply = Ether(reply)
    assert ip is None and (reply.dst, reply[ARP].op, reply[ARP].hwsrc, reply[ARP].psrc, reply[ARP].pdst) == \
        ("02:00:00:00:00:01", 2, link.mac.hex(":"), "10.8.0.2", "10.8.0.1")
    assert link.receive(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, pdst="10.8.0.7"))) == (None, None)
    # IP in frames to us, and only to us
    ip = icmp_echo_request("10.8.0.2", "10.8.0.1", 1, 1, b"x")
    frame = Ether(link.frame(ip))
    assert (frame.dst, frame.src, frame.type, bytes(frame.payload)) == \
        ("02:00:00:00:00:01", link.mac.hex(":"), 0x0800, ip)
    assert link.receive(bytes(Ether(dst=link.mac.hex(":"), type=0x0800) / ip)) == (ip, None)
    assert link.receive(bytes(Ether(dst="02:00:00:00:00:05", type=0x0800) / ip)) == (None, None)
    assert link.receive(b"\x01\x02") == (None, None)


# --- ICMPv6 ---------------------------------------------------------------------------------------

def test_icmp6_echo_request_is_what_scapy_reads_with_a_valid_checksum():
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

    raw = dc.icmp6_echo_request("fd00::1000", "fd00::1", 0x4242, 9, b"abcde")
    packet = IPv6(raw)
    assert (packet.src, packet.dst, packet.nh, packet.hlim, packet.plen) == ("fd00::1000", "fd00::1", 58, 64, 13)
    echo = packet[ICMPv6EchoRequest]
    assert (echo.id, echo.seq, bytes(echo.data)) == (0x4242, 9, b"abcde")
    rebuilt = IPv6(raw)
    del rebuilt[ICMPv6EchoRequest].cksum
    assert bytes(rebuilt) == raw
    reply = bytes(IPv6(src="fd00::1", dst="fd00::1000") / ICMPv6EchoReply(id=0x4242, seq=9, data=b"abcde"))
    assert dc.parse_icmp6_echo_reply(reply) == ("fd00::1", "fd00::1000", 0x4242, 9, b"abcde")
    broken = bytearray(reply)
    broken[-1] ^= 1
    assert dc.parse_icmp6_echo_reply(bytes(broken)) is None
    assert dc.parse_icmp6_echo_reply(raw) is None  # a request is not a reply


def test_ipv6_addresses_come_from_ifconfig_ipv6():
    peer = FakePeer(ifconfig_ipv6=["fd00::1000/64", "fd00::1"])
    assert dc._addresses(peer) == ("10.9.0.2", "10.9.0.1")  # IPv4 first when both were pushed
    peer.settings.ping_target = "fd00::7"
    assert dc._addresses(peer) == ("fd00::1000", "fd00::7")
    peer.settings.ping_target = None
    peer.push_reply = {"ifconfig_ipv6": ["fd00::1000/64", "fd00::1"]}  # an IPv6-only tunnel
    assert dc._addresses(peer) == ("fd00::1000", "fd00::1")
