"""Key files and .ovpn profiles: the formats OpenVPN writes, and clear one-line
errors naming the file for everything else."""

import pytest

from captures import key_path
from ovpndiag.keys import (KeyFileError, StaticKey, TLSCryptV2ClientKey, TLSCryptV2ServerKey,
                           parse_key, read_key, read_static_key)
from ovpndiag.profile import ProfileError, parse_profile, read_profile

TA = key_path("keys/ta.key")


def test_static_key_from_openvpn_genkey():
    key = read_static_key(TA)
    hex_digits = "".join(line for line in TA.read_text().splitlines()
                         if line and not line.startswith(("#", "-")))
    material = bytes.fromhex(hex_digits)
    assert key.cipher(0) == material[0:64] and key.hmac(0) == material[64:128]
    assert key.cipher(1) == material[128:192] and key.hmac(1) == material[192:256]


def test_crlf_and_comments_are_tolerated():
    text = TA.read_text()
    messy = "# my key\r\n; another comment\r\n" + text.replace("\n", "\r\n")
    assert parse_key(messy, "messy") == read_static_key(TA)


def test_tls_crypt_v2_keys():
    server = read_key(key_path("keys/tcv2-server.key"))
    client = read_key(key_path("keys/tcv2-client.key"))
    assert isinstance(server, TLSCryptV2ServerKey) and isinstance(client, TLSCryptV2ClientKey)
    assert len(client.wkc) == 299 and isinstance(client.kc, StaticKey)


def test_key_material_never_shows_in_repr_or_str():
    key = read_static_key(TA)
    client = read_key(key_path("keys/tcv2-client.key"))
    secrets = [key.cipher(0), key.hmac(0), key.cipher(1), key.hmac(1), client.kc.hmac(0), client.wkc]
    for obj in (key, read_key(key_path("keys/tcv2-server.key")), client, client.kc):
        text = (repr(obj) + str(obj)).lower()
        assert "ta.key" in text or "tcv2" in text
        assert not any(secret[:4].hex() in text for secret in secrets)


@pytest.mark.parametrize("content,message", [
    ("", "no '-----BEGIN OpenVPN"),
    ("hello world\n", "no '-----BEGIN OpenVPN"),
    ("-----BEGIN OpenVPN Static key V1-----\nzz\n-----END OpenVPN Static key V1-----\n", "not valid hex"),
    ("-----BEGIN OpenVPN Static key V1-----\n00ff\n-----END OpenVPN Static key V1-----\n",
     "has 2 bytes, expected 256"),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "not an OpenVPN static or tls-crypt-v2 key"),
    ("-----BEGIN OpenVPN tls-crypt-v2 server key-----\n!!!\n-----END OpenVPN tls-crypt-v2 server key-----\n",
     "not valid base64"),
    ("-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n-----END OpenVPN tls-crypt-v2 server key-----\n",
     "has 3 bytes, expected 128"),
    ("-----BEGIN OpenVPN tls-crypt-v2 client key-----\nAAAA\n-----END OpenVPN tls-crypt-v2 client key-----\n",
     "too short"),
])
def test_malformed_key_files_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(KeyFileError) as error:
        read_key(path)
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_unreadable_and_directory(tmp_path):
    with pytest.raises(KeyFileError, match="no such file"):
        read_key(tmp_path / "absent.key")
    with pytest.raises(KeyFileError, match="is a directory"):
        read_key(tmp_path)


def test_wrong_kind_of_key_is_named():
    with pytest.raises(KeyFileError, match="holds a tls-crypt-v2 server key, expected an OpenVPN static key"):
        read_static_key(key_path("keys/tcv2-server.key"))


def test_binary_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.key"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(KeyFileError, match="garbage.key"):
        read_key(path)


def _inline(tag, path):
    return f"<{tag}>\n{path.read_text()}</{tag}>\n"


def test_profile_with_inline_keys_and_key_direction(tmp_path):
    text = ("client\nremote vpn.example.net 1195 tcp\nremote 192.0.2.7\nproto udp\nport 1196\n"
            "auth SHA256\nkey-direction 1\n" + _inline("tls-auth", TA)
            + _inline("tls-crypt-v2", key_path("keys/tcv2-client.key")))
    profile = parse_profile(text.replace("\n", "\r\n"), "client.ovpn")
    assert [(r.host, r.port, r.proto) for r in profile.remotes] == [("vpn.example.net", 1195, "tcp"),
                                                                     ("192.0.2.7", None, None)]
    assert (profile.proto, profile.port, profile.auth, profile.key_direction) == ("udp", 1196, "SHA256", 1)
    assert profile.tls_auth == read_static_key(TA)
    assert profile.tls_crypt_v2.wkc == read_key(key_path("keys/tcv2-client.key")).wkc


def test_profile_key_files_are_found_beside_the_profile(tmp_path):
    (tmp_path / "ta.key").write_text(TA.read_text())
    (tmp_path / "tc.key").write_text(key_path("keys/tc.key").read_text())
    profile_path = tmp_path / "office.ovpn"
    profile_path.write_text("tls-auth ta.key 0\ntls-crypt tc.key\n")
    profile = read_profile(profile_path)
    assert profile.key_direction == 0 and profile.tls_auth == read_static_key(TA)
    assert profile.tls_crypt == read_static_key(key_path("keys/tc.key"))


def test_options_over_a_profile_follow_one_rule(tmp_path):
    """profile.overlay and control_keys: what the probe, the handshake and dissect all use."""
    from ovpndiag.profile import control_keys, overlay

    (tmp_path / "ta.key").write_text(TA.read_text())
    (tmp_path / "tc.key").write_text(key_path("keys/tc.key").read_text())
    profile = parse_profile("auth SHA256\nkey-direction 0\nport 1196\ntls-auth ta.key\n", base_dir=tmp_path)
    merged = overlay(profile, auth="SHA512", key_direction=None, port="", tls_version_max=None)
    assert (merged.auth, merged.key_direction, merged.port, merged.tls_version_max) == ("SHA512", 0, 1196, None)
    assert vars(overlay(None, auth=None, port=1194)) == {"auth": None, "port": 1194}
    keys = control_keys(profile, tls_crypt=str(tmp_path / "tc.key"))
    assert keys.tls_auth == read_static_key(TA) and keys.tls_crypt == read_static_key(key_path("keys/tc.key"))
    assert keys.tls_crypt_v2 is None and keys.given == ["--tls-crypt"]
    assert control_keys(None, tls_auth=str(tmp_path / "tc.key")).tls_auth == read_static_key(key_path("keys/tc.key"))


@pytest.mark.parametrize("text,message", [
    ("<tls-auth>\n-----BEGIN OpenVPN Static key V1-----\n", "never closed"),
    ("tls-auth missing.key\n", "missing.key: no such file"),
    ("key-direction 2\n", "key direction must be 0 or 1"),
    ("remote host notaport\n", "'notaport' is not a port number"),
    ("remote 'unbalanced\n", "office.ovpn:1"),
    (_inline("tls-crypt", key_path("keys/tcv2-server.key")), "tls-crypt needs a static key"),
])
def test_bad_profiles_name_the_file(tmp_path, text, message):
    path = tmp_path / "office.ovpn"
    path.write_text(text)
    with pytest.raises(KeyFileError) as error:
        read_profile(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_profile():
    with pytest.raises(ProfileError, match="nowhere.ovpn: no such file"):
        read_profile("nowhere.ovpn")


def _finishes(call, seconds=3.0):
    """Run call() in a thread: (finished in time, the exception it raised)."""
    import threading

    outcome = {}

    def work():
        try:
            call()
        except Exception as error:
            outcome["error"] = error

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive(), outcome.get("error")


@pytest.mark.parametrize("reader,error_class", [(read_key, KeyFileError), (read_profile, ProfileError)])
def test_a_fifo_is_refused_at_once(tmp_path, reader, error_class):
    """Nobody writes to it: reading it would wait for ever (a check must end within -t)."""
    import os

    fifo = tmp_path / "ta.key"
    os.mkfifo(fifo)
    try:
        finished, error = _finishes(lambda: reader(fifo))
        assert finished, "reading a FIFO blocked"
        assert isinstance(error, error_class) and f"{fifo}: is a pipe, not a regular file" in str(error)
    finally:  # free a reader left blocked in open() (only before the fix)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


@pytest.mark.parametrize("reader", [read_key, read_profile])
def test_a_device_is_refused_at_once(reader):
    finished, error = _finishes(lambda: reader("/dev/zero"))
    assert finished and isinstance(error, KeyFileError) and "/dev/zero: is a device" in str(error)


def test_a_file_larger_than_any_key_file_is_refused_unread(tmp_path):
    from ovpndiag.keys import MAX_KEY_FILE_SIZE

    text = TA.read_text()
    big = tmp_path / "big.key"  # a valid key, then comments no key file has
    big.write_text(text + ("# " + "x" * 78 + "\n") * (MAX_KEY_FILE_SIZE // 81 + 1))  # 81-byte lines
    with pytest.raises(KeyFileError, match=r"big.key: is larger than a key file can be \(more than 64 KiB\)"):
        read_key(big)
    fits = tmp_path / "fits.key"
    fits.write_text(text + ("# " + "x" * 78 + "\n") * ((MAX_KEY_FILE_SIZE - len(text)) // 81))
    assert read_key(fits) == read_static_key(TA)


def test_profile_records_where_static_key_mode_is(tmp_path):
    profile = parse_profile("dev tun\nremote 192.0.2.1\nsecret static.key 0\n", "p2p.ovpn")
    assert profile.secret == "p2p.ovpn:3"
    assert parse_profile("client\nremote 192.0.2.1\n", "client.ovpn").secret is None
