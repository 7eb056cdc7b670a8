"""Truncated, corrupted and random bytes never make a public function raise
anything but its own documented error; an accepted packet always rebuilds to the
bytes it came from."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from captures import MANIFEST, key_path, openvpn_packets
from ovpndiag.keys import KeyFileError, parse_key, read_key
from ovpndiag.layers import Wrapping, dissect
from ovpndiag.profile import parse_profile
from ovpndiag.wrap import TLSAuth, TLSCrypt, TLSCryptV2Client, TLSCryptV2Server, WrapError

WRAPPINGS = [Wrapping(), Wrapping.tls_auth("SHA1"), Wrapping.tls_auth("SHA256"), Wrapping.tls_auth("SHA512"),
             Wrapping("tls-crypt"), Wrapping("tls-crypt", decrypted=True), Wrapping("tls-crypt-v2")]


def _openers():
    static = read_key(key_path("keys/ta.key"))
    return [TLSAuth(static, 0, "SHA1"), TLSAuth(static, None, "SHA512"), TLSCrypt(static, "server"),
            TLSCryptV2Client(read_key(key_path("keys/tcv2-client.key"))),
            TLSCryptV2Server(read_key(key_path("keys/tcv2-server.key")))]


OPENERS = _openers()
REAL_PACKETS = [p.data for capture in MANIFEST for p in openvpn_packets(capture)]


def mangled(seed, count):
    """Real packets cut short, with bytes flipped, dropped, inserted or repeated."""
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(rng.choice(REAL_PACKETS))
        operation = rng.randrange(5)
        if operation == 0:
            data = data[:rng.randrange(len(data) + 1)]
        elif operation == 1:
            for _flip in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif operation == 2 and data:
            del data[rng.randrange(len(data))]
        elif operation == 3:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        else:
            data = data + data[:rng.randrange(len(data) + 1)]
        yield bytes(data)


def check_dissect(data, wrapping):
    pkt, problem = dissect(data, wrapping)
    if problem is None:
        assert bytes(pkt) == data, f"accepted {data.hex()} as {wrapping} but rebuilt differently"


def check_openers(data):
    for opener in OPENERS:
        try:
            opener.unwrap(data)
        except WrapError:
            pass
        assert opener.verify(data) in (True, False)


def test_every_truncation_of_every_first_packet():
    for capture in MANIFEST:
        first = next(openvpn_packets(capture)).data
        for length in range(len(first) + 1):
            for wrapping in WRAPPINGS:
                check_dissect(first[:length], wrapping)
            check_openers(first[:length])


@pytest.mark.parametrize("seed", range(4))
def test_mangled_real_packets(seed):
    for data in mangled(seed, 800):
        for wrapping in WRAPPINGS:
            check_dissect(data, wrapping)
        check_openers(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(WRAPPINGS))
def test_random_bytes(data, wrapping):
    check_dissect(data, wrapping)
    check_openers(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_random_key_and_profile_text_raises_only_key_file_errors(text):
    for attempt in (lambda: parse_key(text, "fuzz"), lambda: parse_profile(text, "fuzz.ovpn")):
        try:
            attempt()
        except KeyFileError as error:
            assert "fuzz" in str(error)


def test_mangled_key_files_raise_only_key_file_errors():
    rng = random.Random(7)
    sources = [key_path(f"keys/{name}").read_text() for name in ("ta.key", "tcv2-client.key", "tcv2-server.key")]
    for _ in range(600):
        text = list(rng.choice(sources))
        for _flip in range(rng.randint(1, 3)):
            text[rng.randrange(len(text))] = rng.choice("0123456789abcdefXYZ+/=\n -#")
        try:
            parse_key("".join(text), "mangled")
        except KeyFileError:
            pass


def test_probe_validation_survives_any_reply():
    """What a server (or anything on its port) sends back never crashes the probe."""
    from ovpndiag.check import evaluate
    from ovpndiag.probe import ProbeResult, explain, validate_reply
    from ovpndiag.render.nagios import plugin_output
    from ovpndiag.render.report import probe_report
    from ovpndiag.settings import probe_settings

    settings_list = [probe_settings(host="x"), probe_settings(host="x", tls_auth=key_path("keys/ta.key")),
                     probe_settings(host="x", tls_auth=key_path("keys/ta.key"), auth="SHA512", key_direction="none"),
                     probe_settings(host="x", tls_crypt=key_path("keys/tc.key")),
                     probe_settings(host="x", tls_crypt_v2=key_path("keys/tcv2-client.key"))]
    replies = list(mangled(11, 1500)) + [b"", b"\x40", b"\x40" * 26, b"HTTP/1.1 200 OK\r\n\r\n"]
    for data in replies:
        for probing in settings_list:
            result = ProbeResult("x", 1194, "udp", probing.wrapping_name, address="127.0.0.1:1194")
            validate_reply(data, 0x1122334455667788, probing, result)
            result.rtt = 0.001
            result.message, result.causes = explain(result)
            assert result.verdict and result.checks and result.message
            assert probe_report(result, probing) and plugin_output(evaluate(result), verbose=True)
