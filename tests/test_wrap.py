"""tls-auth, tls-crypt and tls-crypt-v2 against every control packet of the real
captures: right keys open them, wrong keys, directions and digests do not, and
wrapping the opened packet again gives back the exact bytes OpenVPN sent."""

import struct
import time

import pytest

from captures import MANIFEST, entry, key_path, openvpn_packets, wrappers
from ovpndiag.keys import read_key
from ovpndiag.layers import HMAC_SIZES, OpenVPN, Wrapping
from ovpndiag.protocol import DATA_OPCODES, Opcode
from ovpndiag.wrap import (NoWrapping, TLSAuth, TLSCrypt, TLSCryptV2Client, TLSCryptV2Server,
                           WrapError)


def control_packets(capture, sender=None):
    """Key id 0 control packets (renegotiations are dynamically tls-crypt wrapped)."""
    return [p for p in openvpn_packets(capture)
            if p.data[0] >> 3 not in DATA_OPCODES and p.data[0] & 7 == 0
            and (sender is None or p.sender == sender)]


def opener(capture, sender):
    """The receiving peer's wrapper for packets from ``sender``."""
    server_view, client_view, _ = wrappers(capture)
    return server_view if sender == "client" else client_view


TLS_AUTH = [c["file"] for c in MANIFEST if c["wrapping"] == "tls-auth" and c["outcome"] == "connected"]
TLS_CRYPT = [c["file"] for c in MANIFEST if c["wrapping"] == "tls-crypt" and c["outcome"] == "connected"]


@pytest.mark.parametrize("name", TLS_AUTH)
def test_tls_auth_packets_verify_and_rewrap_to_the_same_bytes(name):
    capture = entry(name)
    packets = control_packets(capture)
    assert len(packets) >= 10
    for packet in packets:
        view = opener(capture, packet.sender)
        opened = view.unwrap(packet.data)
        assert view.peer().wrap(opened.plain, opened.replay_packet_id, opened.net_time) == packet.data


@pytest.mark.parametrize("name", TLS_AUTH)
def test_tls_auth_fails_with_wrong_key_direction_or_digest(name):
    capture = entry(name)
    right = opener(capture, "client")
    wrong_key = TLSAuth(read_key(key_path("keys/ta-wrong.key")), right.direction, right.digest)
    # A receiver checks with key 1's HMAC slot under direction 0, key 0's otherwise:
    # so for a bidirectional key, direction 1 is no mistake and 0 is.
    receive_slot = {0: 1, 1: 0, None: 0}
    wrong_direction = [TLSAuth(right.key, d, right.digest) for d in (0, 1, None)
                       if receive_slot[d] != receive_slot[right.direction]]
    assert wrong_direction
    wrong_digest = [TLSAuth(right.key, right.direction, d) for d in HMAC_SIZES if d != right.digest]
    for packet in control_packets(capture, "client"):
        assert right.verify(packet.data)
        for wrong in [wrong_key] + wrong_direction + wrong_digest:
            assert not wrong.verify(packet.data), f"{wrong} verified frame {packet.frame}"
            with pytest.raises(WrapError):
                wrong.unwrap(packet.data)


def test_tls_auth_replay_packet_ids_count_from_1_with_a_fixed_net_time():
    capture = entry("udp-tls-auth-sha256")
    for sender in ("client", "server"):
        opened = [opener(capture, sender).unwrap(p.data) for p in control_packets(capture, sender)]
        assert [o.replay_packet_id for o in opened] == list(range(1, len(opened) + 1))
        assert len({o.net_time for o in opened}) == 1


@pytest.mark.parametrize("name", TLS_CRYPT)
def test_tls_crypt_packets_unwrap_and_rewrap_to_the_same_bytes(name):
    capture = entry(name)
    for packet in control_packets(capture):
        view = opener(capture, packet.sender)
        opened = view.unwrap(packet.data)
        plain = OpenVPN(opened.plain)  # dissects like an unwrapped packet
        assert plain.session_id == OpenVPN(packet.data, wrapping=Wrapping("tls-crypt")).session_id
        decrypted = OpenVPN(opened.decrypted, wrapping=Wrapping("tls-crypt", decrypted=True))
        assert decrypted.acks == plain.acks and len(opened.decrypted) == len(packet.data)
        assert view.peer().wrap(opened.plain, opened.replay_packet_id, opened.net_time) == packet.data


@pytest.mark.parametrize("name", TLS_CRYPT)
def test_tls_crypt_fails_with_the_wrong_key_or_role(name):
    capture = entry(name)
    wrong_key = TLSCrypt(read_key(key_path("keys/tc-wrong.key")), "server")
    wrong_role = TLSCrypt(read_key(key_path(capture["key"])), "client")
    for packet in control_packets(capture, "client"):
        for wrong in (wrong_key, wrong_role):
            assert not wrong.verify(packet.data)
            with pytest.raises(WrapError):
                wrong.unwrap(packet.data)


def _first_client_tls_payload(capture):
    for packet in control_packets(capture, "client"):
        if packet.data[0] >> 3 in (Opcode.P_CONTROL_V1, Opcode.P_CONTROL_WKC_V1):
            opened = opener(capture, "client").unwrap(packet.data)
            if opened.decrypted is None:
                return bytes(OpenVPN(opened.plain).payload)
            # P_CONTROL_WKC_V1 exists only wrapped: dissect the decrypted wire form
            wrapping = Wrapping(capture["wrapping"], decrypted=True)
            return bytes(OpenVPN(opened.decrypted, wrapping=wrapping).payload)
    raise AssertionError("no client P_CONTROL_V1")


@pytest.mark.parametrize("name", [c["file"] for c in MANIFEST if c["outcome"] == "connected"])
def test_first_client_control_payload_starts_a_tls_client_hello(name):
    payload = _first_client_tls_payload(entry(name))
    content_type, version, _length, handshake_type = struct.unpack("!BHHB", payload[:6])
    assert (content_type, handshake_type) == (22, 1)  # handshake record, ClientHello
    assert version in (0x0301, 0x0303)


def test_tls_crypt_v2_wkc_unwraps_with_the_server_key():
    capture = entry("udp-tls-crypt-v2")
    server = TLSCryptV2Server(read_key(key_path(capture["key"])))
    client_key = read_key(key_path(capture["client"]["key"]))
    first = control_packets(capture, "client")[0]
    parsed = OpenVPN(first.data)
    assert parsed.opcode == 10 and parsed.replay_packet_id == 0x0F000001  # EARLY_NEG_START + 1
    assert parsed.wkc == client_key.wkc and len(parsed.wkc) == 299
    info = server.unwrap_client_key(parsed.wkc)
    assert info.kc == client_key.kc
    assert info.metadata_type == 1  # a timestamp, openvpn --genkey's default
    assert 1_600_000_000 < info.timestamp <= time.time()


def test_tls_crypt_v2_whole_session_opens_and_the_server_asks_to_resend_the_wkc():
    capture = entry("udp-tls-crypt-v2")
    server = TLSCryptV2Server(read_key(key_path(capture["key"])))
    client = TLSCryptV2Client(read_key(key_path(capture["client"]["key"])))
    session = None
    opcodes = []
    for packet in control_packets(capture):
        opcodes.append(packet.data[0] >> 3)
        if packet.sender == "client":
            opened = server.unwrap(packet.data) if opcodes[-1] in (10, 11) else session.unwrap(packet.data)
            session = session or server.for_client(opened.wkc)
            again = client.wrap(opened.plain, opened.replay_packet_id, opened.net_time)
        else:
            opened = client.unwrap(packet.data)
            again = client.peer().wrap(opened.plain, opened.replay_packet_id, opened.net_time)
        assert again == packet.data
    assert opcodes[:3] == [10, 8, 11]  # reset V3, server reset, then P_CONTROL_WKC_V1
    reply = control_packets(capture, "server")[0]
    flags = OpenVPN(client.unwrap(reply.data).decrypted, wrapping=Wrapping("tls-crypt-v2", decrypted=True)).tlvs[0]
    assert flags.type == 1 and flags.flags.RESEND_WKC


def test_tls_crypt_v2_wkc_fails_with_another_server_key_and_when_altered():
    capture = entry("udp-tls-crypt-v2")
    client_key = read_key(key_path(capture["client"]["key"]))
    other = TLSCryptV2Server(read_key(key_path(capture["key"])))
    other.server_key.auth_key = bytes(32)
    with pytest.raises(WrapError, match="WKc tag"):
        other.unwrap_client_key(client_key.wkc)
    server = TLSCryptV2Server(read_key(key_path(capture["key"])))
    altered = bytearray(client_key.wkc)
    altered[40] ^= 1
    with pytest.raises(WrapError):
        server.unwrap_client_key(bytes(altered))


def test_wrap_client_key_matches_what_openvpn_made():
    capture = entry("udp-tls-crypt-v2")
    server = TLSCryptV2Server(read_key(key_path(capture["key"])))
    client_key = read_key(key_path(capture["client"]["key"]))
    info = server.unwrap_client_key(client_key.wkc)
    assert server.wrap_client_key(info.kc, bytes([1]) + info.metadata) == client_key.wkc


@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-key", "fail-tls-auth-wrong-direction",
                                  "fail-tls-auth-digest-mismatch", "fail-tls-crypt-wrong-key"])
def test_rejected_packets_fail_with_the_servers_key_and_open_with_the_clients(name):
    """Why the server dropped them, proven: its settings reject every reset, while a
    receiver with the client's own (wrong) settings accepts them."""
    capture = entry(name)
    server_view, client_view, _ = wrappers(capture)
    packets = control_packets(capture, "client")
    assert packets
    for packet in packets:
        assert not server_view.verify(packet.data)
        assert client_view.peer().unwrap(packet.data).replay_packet_id >= 1


@pytest.mark.parametrize("digest", list(HMAC_SIZES))
@pytest.mark.parametrize("direction", [0, 1, None])
def test_tls_auth_round_trip_for_every_digest_and_direction(digest, direction):
    key = read_key(key_path("keys/ta.key"))
    sender = TLSAuth(key, direction, digest)
    plain = bytes(OpenVPN(opcode=7, session_id=0x0102030405060708))
    wrapped = sender.wrap(plain, 1, 1_700_000_000)
    assert len(wrapped) == len(plain) + HMAC_SIZES[digest] + 8
    # Where wrap() put each field is where the layers read it (its offsets come from them).
    layered = OpenVPN(wrapped, wrapping=sender.wrapping)
    assert (layered.session_id, layered.replay_packet_id, layered.net_time) == (0x0102030405060708, 1, 1_700_000_000)
    assert layered.hmac == sender._hmac(sender._send_key, struct.pack("!II", 1, 1_700_000_000), plain)
    receiver = sender.peer()
    assert receiver.unwrap(wrapped).plain == plain
    if direction is not None:
        assert not sender.verify(wrapped)  # a peer never accepts its own direction's HMAC


@pytest.mark.parametrize("opcode", [Opcode.P_CONTROL_SOFT_RESET_V1, Opcode.P_CONTROL_V1])
def test_tls_crypt_wrap_puts_its_fields_where_the_layers_read_them(opcode):
    key = read_key(key_path("keys/tc.key"))
    plain = bytes(OpenVPN(opcode=opcode, session_id=0x0102030405060708, acks=[3], remote_session_id=9,
                          message_packet_id=4) / b"tls bytes")
    wrapped = TLSCrypt(key, "client").wrap(plain, 7, 1_700_000_000)
    layered = OpenVPN(wrapped, wrapping=Wrapping("tls-crypt"))
    assert (layered.session_id, layered.replay_packet_id, layered.net_time) == (0x0102030405060708, 7, 1_700_000_000)
    assert len(layered.tag) == 32 and len(layered.ciphertext) == len(plain) - 9
    opened = TLSCrypt(key, "server").unwrap(wrapped)
    decrypted = OpenVPN(opened.decrypted, wrapping=Wrapping("tls-crypt", decrypted=True))
    assert (decrypted.acks, decrypted.remote_session_id, decrypted.message_packet_id) == ([3], 9, 4)
    assert opened.plain == plain and bytes(decrypted.payload) == b"tls bytes"


def test_no_wrapping_is_the_identity():
    assert NoWrapping().unwrap(b"\x38" + bytes(13)).plain == b"\x38" + bytes(13)
