"""analyze's key trials (ovpndiag/analyze/keytrials.py) on real OpenVPN 2.6 captures: the
client's first unanswered packet, tried with the server's key, names why the server dropped
it - with the server's digest and key-direction given and not given. Hand-made bytes only for
the edge cases (cut, too short, damaged)."""

import subprocess
import sys

import pytest

from captures import entry, key_path, openvpn_packets
from ovpndiag.analyze.keytrials import KeyTrial, ServerKeys, trial
from ovpndiag.dissect.keyring import KeyRing
from ovpndiag.keys import read_key

_RING_ARGUMENT = {"tls-auth": "tls_auth", "tls-crypt": "tls_crypt", "tls-crypt-v2": "tls_crypt_v2"}


def first_client_packet(name):
    capture = entry(name)
    return next(p for p in openvpn_packets(capture) if p.sender == "client").data, capture["transport"]


def server_keys(kind, key_file, digest=None, direction=None):
    ring = KeyRing(**{_RING_ARGUMENT[kind]: read_key(key_path(key_file))})
    return ServerKeys.from_options(ring, digest, direction)


def try_capture(name, digest=None, direction=None, kind=None, key_file=None) -> KeyTrial:
    """The trial of a capture's first client packet with its server's key (or the one given)."""
    capture = entry(name)
    packet, transport = first_client_packet(name)
    return trial(packet, transport, server_keys(kind or capture["wrapping"], key_file or capture["key"],
                                                 digest, direction))


# Server settings as given to analyze: the capture's own (from its manifest), or not given.
GIVEN = {"digest and direction": (True, True), "digest only": (True, False),
         "direction only": (False, True), "neither": (False, False)}


def settings(name, given):
    capture = entry(name)
    digest_given, direction_given = GIVEN[given]
    direction = capture["server_key_direction"]
    return (capture["auth"] if digest_given else None,
            ("none" if direction is None else direction) if direction_given else None)


# --- real failures ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given", GIVEN)
@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-key", "udp-unanswered-4444"])
def test_another_tls_auth_key_is_wrong_key_whatever_is_given(name, given):
    result = try_capture(name, *settings(name, given))
    assert result.verdict == "wrong-key" and not result.key_fine and result.checked
    assert "no key-direction and no digest" in result.evidence


@pytest.mark.parametrize("given", GIVEN)
def test_a_client_without_tls_auth_is_no_tls_auth(given):
    result = try_capture("fail-no-tls-auth", *settings("fail-no-tls-auth", given))
    assert result.verdict == "no-tls-auth" and not result.key_fine
    assert "plain (14 bytes, no HMAC)" in result.evidence


def test_a_client_without_tls_crypt_is_no_tls_auth_and_says_no_tls_crypt():
    result = try_capture("fail-no-tls-auth", kind="tls-crypt", key_file="keys/tc.key")
    assert result.verdict == "no-tls-auth" and result.evidence.startswith("no tls-crypt:")


def test_a_client_without_tls_crypt_v2_is_no_tls_auth_and_says_no_tls_crypt_v2():
    result = try_capture("fail-no-tls-auth", kind="tls-crypt-v2", key_file="keys/tcv2-server.key")
    assert result.verdict == "no-tls-auth" and result.evidence.startswith("no tls-crypt-v2:")


@pytest.mark.parametrize("digest", ["SHA1", None])
@pytest.mark.parametrize("direction", [0, "0"])
def test_the_servers_own_direction_is_wrong_key_direction(direction, digest):
    result = try_capture("fail-tls-auth-wrong-direction", digest, direction)
    assert result.verdict == "wrong-key-direction" and not result.key_fine
    assert "the client uses the server's own direction and needs key-direction 1" in result.evidence


@pytest.mark.parametrize("digest", ["SHA1", None])
def test_direction_0_with_the_servers_direction_unknown_is_no_verdict_but_possibly_wrong_direction(digest):
    """The rule for an unknown server key-direction: a client signing with HMAC key 0 is
    wrong only for a server with key-direction 0 (the usual), so no verdict - the evidence
    says so and ``possible`` names it."""
    result = try_capture("fail-tls-auth-wrong-direction", digest, None)
    assert result.verdict is None and not result.key_fine and result.checked
    assert result.possible == "wrong-key-direction"
    assert "key-direction 0 (or none)" in result.evidence and "not given" in result.evidence


@pytest.mark.parametrize("direction", [1, "none"])
def test_direction_0_is_right_for_a_server_with_direction_1_or_none(direction):
    result = try_capture("fail-tls-auth-wrong-direction", "SHA1", direction)
    assert result.verdict is None and result.key_fine and result.possible is None


@pytest.mark.parametrize("direction", [0, None])
def test_another_digest_than_the_servers_is_wrong_digest(direction):
    result = try_capture("fail-tls-auth-digest-mismatch", "SHA256", direction)
    assert result.verdict == "wrong-digest"
    assert "the server expects --auth SHA256 (32-byte HMAC), the client uses SHA1 (20 bytes)" in result.evidence


@pytest.mark.parametrize("direction", [0, None])
def test_without_the_servers_digest_the_one_that_verifies_is_the_clients_and_the_key_is_right(direction):
    result = try_capture("fail-tls-auth-digest-mismatch", None, direction)
    assert result.verdict is None and result.key_fine
    assert "key-direction 1 and SHA1" in result.evidence and "--auth is not given" in result.evidence


def test_wrong_direction_and_digest_is_wrong_key_direction_naming_the_digest_too():
    # the digest-mismatch client signs with key-direction 1 and SHA1; a server with key-direction 1 and SHA256
    result = try_capture("fail-tls-auth-digest-mismatch", "sha-256", 1)
    assert result.verdict == "wrong-key-direction"
    assert "its digest differs too (the server's --auth is SHA256)" in result.evidence


def test_a_bidirectional_server_and_a_client_with_direction_1_is_wrong_key_direction():
    result = try_capture("udp-tls-auth-sha1", "SHA1", "none")
    assert result.verdict == "wrong-key-direction" and "needs no key-direction either" in result.evidence


@pytest.mark.parametrize("given", ["digest and direction", "neither"])
def test_another_tls_crypt_key_is_wrong_key(given):
    result = try_capture("fail-tls-crypt-wrong-key", *settings("fail-tls-crypt-wrong-key", given))
    assert result.verdict == "wrong-key" and "tag does not verify" in result.evidence


def test_a_tls_crypt_v2_client_key_of_another_server_is_wrong_key():
    result = try_capture("fail-tls-crypt-v2-wrong-key")
    assert result.verdict == "wrong-key"
    assert "wrapped key (WKc, 299 bytes) does not unwrap with the server's tls-crypt-v2 key" in result.evidence


# --- another wrapping than the server's ----------------------------------------------------------------

def test_a_tls_crypt_client_against_a_tls_auth_server_with_the_same_key_file():
    result = try_capture("udp-tls-crypt", kind="tls-auth", key_file="keys/tc.key")
    assert result.verdict == "wrong-key" and "the client uses tls-crypt, the server tls-auth" in result.evidence


def test_a_tls_auth_client_against_a_tls_crypt_server_with_the_same_key_file():
    result = try_capture("udp-tls-auth-sha256", kind="tls-crypt", key_file="keys/ta.key")
    assert result.verdict == "wrong-key"
    assert "tls-auth HMAC made with the server's tls-crypt key (key-direction 1, SHA256)" in result.evidence


@pytest.mark.parametrize("kind, key_file", [("tls-auth", "keys/ta.key"), ("tls-crypt", "keys/tc.key")])
def test_a_tls_crypt_v2_client_against_a_static_key_server(kind, key_file):
    result = try_capture("udp-tls-crypt-v2", kind=kind, key_file=key_file)
    assert result.verdict == "wrong-key" and f"it uses tls-crypt-v2, the server {kind}" in result.evidence


def test_a_tls_crypt_client_against_a_tls_crypt_v2_server():
    result = try_capture("udp-tls-crypt", kind="tls-crypt-v2", key_file="keys/tcv2-server.key")
    assert result.verdict == "wrong-key" and "carries no wrapped client key" in result.evidence


# --- the key is right: the cause is elsewhere -----------------------------------------------------------

@pytest.mark.parametrize("given", GIVEN)
@pytest.mark.parametrize("name", ["udp-tls-auth-sha1", "udp-tls-auth-sha512", "udp6-tls-auth", "tcp-tls-auth",
                                  "udp-tls-crypt", "tcp-tls-crypt", "udp-tls-crypt-v2"])
def test_a_working_clients_packet_verifies(name, given):
    result = try_capture(name, *settings(name, given))
    assert result.verdict is None and result.key_fine and result.possible is None and result.checked


def test_a_bidirectional_pair_verifies_when_the_server_says_none():
    result = try_capture("udp-tls-auth-bidir", "SHA1", "none")
    assert result.key_fine and "as the server (no key-direction, bidirectional) expects" in result.evidence


def test_a_wrong_key_among_several_keys_gives_way_to_the_one_that_verifies():
    ring = KeyRing(tls_auth=read_key(key_path("keys/ta-wrong.key")), tls_crypt=read_key(key_path("keys/tc.key")))
    packet, transport = first_client_packet("udp-tls-crypt")
    assert trial(packet, transport, ServerKeys.from_options(ring)).key_fine


# --- edge cases: hand-made from real packets --------------------------------------------------------------

def test_a_packet_cut_by_the_snap_length_is_not_judged():
    packet, transport = first_client_packet("fail-tls-auth-wrong-key")
    result = trial(packet[:30], transport, server_keys("tls-auth", "keys/ta.key"), cut=len(packet) - 30)
    assert result.verdict is None and not result.checked and not result.key_fine
    assert "12 of its 42 bytes missing" in result.evidence


@pytest.mark.parametrize("kind, key_file, name", [("tls-auth", "keys/ta.key", "udp-tls-auth-sha1"),
                                                  ("tls-crypt", "keys/tc.key", "udp-tls-crypt")])
def test_a_packet_too_short_for_the_hmac_or_tag_is_not_judged(kind, key_file, name):
    packet, transport = first_client_packet(name)
    short = packet[:9] + b"\x07" + packet[10:30]  # (byte 9 not 0: nor a plain reset)
    result = trial(short, transport, server_keys(kind, key_file))
    assert result.verdict is None and not result.checked and "too short for a" in result.evidence


@pytest.mark.parametrize("size", [0, 1, 8])
@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-key", "fail-tls-crypt-wrong-key", "udp-tls-crypt"])
@pytest.mark.parametrize("kind, key_file", [("tls-auth", "keys/ta.key"), ("tls-crypt", "keys/tc.key"),
                                            ("tls-crypt-v2", "keys/tcv2-server.key")])
def test_a_packet_too_short_for_openvpn_is_not_judged(kind, key_file, name, size):
    packet, transport = first_client_packet(name)
    result = trial(packet[:size], transport, server_keys(kind, key_file))
    assert result.verdict is None and not result.checked and "too short for an OpenVPN" in result.evidence


def test_a_plain_reset_that_acknowledges_something_is_not_taken_for_no_tls_auth():
    """An unanswered client has nothing to acknowledge: a reset with an ACK is no plain first reset."""
    packet, transport = first_client_packet("fail-no-tls-auth")
    with_ack = packet[:9] + b"\x01" + b"\x00\x00\x00\x00" + bytes(8) + packet[10:]  # 26 bytes
    no_room = packet[:9] + b"\x01" + packet[10:]  # 14 bytes that say one ACK follows
    for odd in (with_ack, no_room):
        result = trial(odd, transport, server_keys("tls-auth", "keys/ta.key", "SHA1", 0))
        assert result.verdict is None and not result.checked


def test_a_tls_auth_reset_one_byte_short_is_wrong_key_not_a_verify():
    packet, transport = first_client_packet("udp-tls-auth-sha1")
    assert trial(packet, transport, server_keys("tls-auth", "keys/ta.key", "SHA1", 0)).key_fine
    result = trial(packet[:-1], transport, server_keys("tls-auth", "keys/ta.key", "SHA1", 0))
    assert result.verdict == "wrong-key"


def test_a_tls_crypt_v2_reset_with_a_damaged_wkc_length_is_not_judged():
    packet, transport = first_client_packet("udp-tls-crypt-v2")
    damaged = packet[:-2] + (len(packet) + 5).to_bytes(2, "big")
    result = trial(damaged, transport, server_keys("tls-crypt-v2", "keys/tcv2-server.key"))
    assert result.verdict is None and not result.checked and "damaged" in result.evidence


def test_a_tls_crypt_v2_reset_whose_tag_fails_under_its_own_client_key_is_wrong_key():
    packet, transport = first_client_packet("udp-tls-crypt-v2")
    flipped = packet[:50] + bytes([packet[50] ^ 1]) + packet[51:]  # the encrypted part (49..53), before the WKc
    result = trial(flipped, transport, server_keys("tls-crypt-v2", "keys/tcv2-server.key"))
    assert result.verdict == "wrong-key" and "unwraps with the server's tls-crypt-v2 key, but" in result.evidence


def test_a_tls_crypt_v2_client_key_alone_cannot_judge_the_server():
    packet, transport = first_client_packet("fail-tls-crypt-v2-wrong-key")
    result = trial(packet, transport, server_keys("tls-crypt-v2", "keys/tcv2-client.key"))
    assert result.verdict is None and not result.checked and "give the server's" in result.evidence


def test_no_key_is_not_judged():
    packet, transport = first_client_packet("fail-tls-auth-wrong-key")
    server = ServerKeys.from_options(KeyRing())
    assert server.empty
    assert trial(packet, transport, server) == KeyTrial(None, "no server key given: the client's packets were not "
                                                              "tried", checked=False)


@pytest.mark.parametrize("digest, direction", [("SHA3", None), (None, 2), (None, "in")])
def test_an_unknown_digest_or_direction_is_one_value_error(digest, direction):
    with pytest.raises(ValueError):
        server_keys("tls-auth", "keys/ta.key", digest, direction)


# --- no key bytes, no cost at import ------------------------------------------------------------------

def _key_file_chunks(relative):
    """12-character pieces of a key file's material lines (hex or base64)."""
    lines = [line.strip() for line in key_path(relative).read_text().splitlines()]
    return {line[i:i + 12] for line in lines if line and not line.startswith(("-", "#"))
            for i in range(0, len(line) - 11, 12)}


@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-key", "fail-tls-auth-wrong-direction", "udp-tls-auth-sha1",
                                  "fail-tls-crypt-wrong-key", "udp-tls-crypt", "fail-tls-crypt-v2-wrong-key",
                                  "udp-tls-crypt-v2"])
def test_evidence_and_repr_show_no_key_material(name):
    capture = entry(name)
    server = server_keys(capture["wrapping"], capture["key"], capture["auth"])
    packet, transport = first_client_packet(name)
    shown = trial(packet, transport, server).evidence + repr(server)
    chunks = _key_file_chunks(capture["key"])
    assert chunks and not any(chunk in shown or chunk.lower() in shown.lower() for chunk in chunks)


def test_importing_the_module_loads_no_wrapper_and_no_cryptography():
    code = ("import sys, ovpndiag.analyze.keytrials; "
            "print(sorted(m for m in sys.modules if m in ('ovpndiag.wrap', 'cryptography', 'hmac', 'scapy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
