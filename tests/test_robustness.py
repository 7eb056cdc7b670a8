"""Truncated, corrupted and random bytes never make a public function raise
anything but its own documented error; an accepted packet always rebuilds to the
bytes it came from."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from captures import MANIFEST, key_path, mangled_packet, openvpn_packets, wrappers
from ovpndiag.keys import KeyFileError, StaticKey, TLSCryptV2ClientKey, TLSCryptV2ServerKey, parse_key, read_key
from ovpndiag.layers import Wrapping, from_wire
from ovpndiag.profile import parse_profile
from ovpndiag.wrap import NoWrapping, TLSAuth, TLSCrypt, TLSCryptV2Client, TLSCryptV2Server, WrapError

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
    """Real packets, each mangled once by the tests' one mangler."""
    rng = random.Random(seed)
    for _ in range(count):
        yield mangled_packet(rng.choice(REAL_PACKETS), rng)


def check_dissect(data, wrapping):
    pkt, problem = from_wire(data, wrapping)
    if problem is None:
        assert bytes(pkt) == data, f"accepted {data.hex()} as {wrapping} but rebuilt differently"


def rewrapped(opener, opened):
    """What the sender wrapped, by the opener's peer: the packet an opener accepted, rebuilt."""
    sender = opener.for_client(opened.wkc).peer() if isinstance(opener, TLSCryptV2Server) else opener.peer()
    extra = {"wkc": opened.wkc} if isinstance(sender, TLSCrypt) else {}
    return sender.wrap(opened.plain, opened.replay_packet_id, opened.net_time, **extra)


def check_openers(data):
    """Each opener refuses the bytes with WrapError, or accepts all of them: what it
    opened wraps back into exactly those bytes (its HMAC or tag covered every one)."""
    accepted = []
    for opener in OPENERS:
        try:
            opened = opener.unwrap(data)
        except WrapError:
            assert opener.verify(data) is False
            continue
        assert opener.verify(data) is True
        assert rewrapped(opener, opened) == data, f"{opener} accepted {data.hex()} but it is not what was sent"
        accepted.append(opener)
    return accepted


def test_every_truncation_of_every_first_packet():
    """No part of a packet is authentic: the peer that accepts a whole reset refuses every
    strict prefix of it (and nothing raises but WrapError on the way)."""
    authentic = 0
    for capture in MANIFEST:
        first = next(openvpn_packets(capture))
        receiver = wrappers(capture)[0 if first.sender == "client" else 1]
        if capture["wrapping"] in ("tls-auth", "tls-crypt", "tls-crypt-v2") and capture["outcome"] == "connected" \
                and first.data[0] >> 3 in (7, 10):  # the client reset of a session that worked
            assert receiver.verify(first.data), capture["file"]
            authentic += 1
        whole = receiver.verify(first.data) and not isinstance(receiver, NoWrapping)
        for length in range(len(first.data)):
            prefix = first.data[:length]
            for wrapping in WRAPPINGS:
                check_dissect(prefix, wrapping)
            check_openers(prefix)
            if whole:
                assert not receiver.verify(prefix), (capture["file"], length)
                with pytest.raises(WrapError):
                    receiver.unwrap(prefix)
    assert authentic >= 10


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


KEY_FILES = {"ta.key": StaticKey, "tcv2-client.key": TLSCryptV2ClientKey, "tcv2-server.key": TLSCryptV2ServerKey}


def _body_positions(text):
    """Where the key's own characters are: the lines between the BEGIN and END lines."""
    lines = text.splitlines(keepends=True)
    begin = next(n for n, line in enumerate(lines) if line.startswith("-----BEGIN"))
    end = next(n for n, line in enumerate(lines) if line.startswith("-----END"))
    start = sum(len(line) for line in lines[:begin + 1])
    return [start + offset for offset, char in enumerate("".join(lines[begin + 1:end])) if char != "\n"]


def _expect_error(text, what):
    with pytest.raises(KeyFileError) as raised:
        parse_key(text, "mangled")
    assert str(raised.value).startswith("mangled: ") and "\n" not in str(raised.value), (what, raised.value)


def test_mangled_key_files_are_read_right_or_refused_with_a_one_line_error():
    rng = random.Random(7)
    static_text = key_path("keys/ta.key").read_text()
    original = read_key(key_path("keys/ta.key"))
    static_hex = "".join(static_text[p] for p in _body_positions(static_text))
    for _ in range(200):
        # A key digit changed to another: still a key, different in exactly that digit.
        position = rng.choice(_body_positions(static_text))
        digit = rng.choice("0123456789abcdef".replace(static_text[position].lower(), ""))
        changed = static_text[:position] + digit + static_text[position + 1:]
        index = _body_positions(static_text).index(position)
        expected = StaticKey(bytes.fromhex(static_hex[:index] + digit + static_hex[index + 1:]))
        assert parse_key(changed, "mangled") == expected != original
    for name, kind in KEY_FILES.items():
        text = key_path(f"keys/{name}").read_text()
        positions = _body_positions(text)
        for _ in range(100):
            # A character no key has, in the key: refused.
            position = rng.choice(positions)
            _expect_error(text[:position] + rng.choice("*!~@%?") + text[position + 1:], (name, position))
            # A line of the key dropped: too short, refused.
            lines = text.splitlines(keepends=True)
            body = [n for n, line in enumerate(lines) if line.strip() and not line.startswith(("-", "#"))]
            dropped = rng.choice(body)
            _expect_error("".join(lines[:dropped] + lines[dropped + 1:]), (name, "line", dropped))
        # Its BEGIN or END line broken: no key block at all.
        _expect_error(text.replace("-----BEGIN", "-----BEGlN"), name)
        _expect_error(text.replace("-----END", "----END"), name)
        # Comments and blank lines anywhere outside the key: the same key.
        assert type(parse_key("# " + "x" * 30 + "\n\n" + text + "\n# after\n", "mangled")) is kind
    assert parse_key("# changed comment\n\n" + static_text.split("\n", 3)[3], "mangled") == original
    # Random flips anywhere: read as a key of its kind, or refused with a one-line error.
    for _ in range(600):
        name = rng.choice(list(KEY_FILES))
        text = list(key_path(f"keys/{name}").read_text())
        for _flip in range(rng.randint(1, 3)):
            text[rng.randrange(len(text))] = rng.choice("0123456789abcdefXYZ+/=\n -#")
        try:
            key = parse_key("".join(text), "mangled")
        except KeyFileError as error:
            assert str(error).startswith("mangled: ") and "\n" not in str(error)
        else:
            assert type(key) is KEY_FILES[name] or type(key) is StaticKey


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
