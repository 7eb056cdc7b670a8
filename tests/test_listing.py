"""The listing's fast path (dissect.listing.ListingReader) prints what the record
path prints (Reader's record dicts through render.line.packet_line): on every
packet of every real capture, with and without keys and colour, and on thousands
of mangled packets fed through real captures' flows."""

import collections
import random

import pytest

from captures import ALL_CAPTURES, CAPTURES, key_path, mangled_packet, no_openvpn_packets
from ovpndiag.capture.datagrams import read_transport
from ovpndiag.dissect import listing
from ovpndiag.dissect.keyring import KeyRing
from ovpndiag.dissect.listing import ListingReader, RenderingReader
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.keys import StaticKey, read_key
from ovpndiag.render.line import packet_line

PORTS = sorted({entry["port"] for entry in ALL_CAPTURES})
# The real-world ones too (cut, floating); static-key traffic has no lines to compare, nor
# fail-port-closed-tcp (SYNs refused by RSTs: no payload at all).
FILES = [entry["file"] for entry in ALL_CAPTURES
         if entry["wrapping"] != "static-key" and not no_openvpn_packets(entry)]


def datagrams(name):
    return list(read_transport(str(CAPTURES / name)))


def record_path(stream, options, colour=False):
    reader = Reader(options)
    records = [record for datagram in stream for record in reader.feed(datagram)] + reader.finish()
    return [(record.frame, packet_line(record, colour)) for record in records]


def fast_path(stream, options, colour=False):
    reader = ListingReader(options, colour)
    return [pair for datagram in stream for pair in reader.feed(datagram)] + reader.finish()


def options(keys=None):
    return Options(ports=PORTS, keys=keys, sessions=False)


@pytest.mark.parametrize("name", FILES)
def test_every_captured_packet_has_the_record_paths_line(name):
    stream = datagrams(name)
    expected = record_path(stream, options())
    assert expected, name
    assert fast_path(stream, options()) == expected
    assert fast_path(stream, options(), colour=True) == record_path(stream, options(), colour=True)


@pytest.mark.parametrize("key_option, key_file", [("tls_auth", "ta.key"), ("tls_auth", "ta-wrong.key"),
                                                   ("tls_crypt", "tc.key")])
def test_with_keys_the_lines_are_the_record_paths(key_option, key_file):
    keys = KeyRing(**{key_option: read_key(key_path("keys/" + key_file), StaticKey)})
    for name in FILES:
        stream = datagrams(name)
        assert fast_path(stream, options(keys)) == record_path(stream, options(keys)), name


def test_the_fast_path_takes_most_packets(monkeypatch):
    """Not a test that cannot fail: the record path is counted, and must be the exception."""
    taken = []
    record = Reader.record
    monkeypatch.setattr(listing.Reader, "record", lambda self, *args: taken.append(args) or record(self, *args))
    lines = fast_path(datagrams("udp-tls-auth-sha256.pcap"), options())
    assert len(taken) <= len(lines) // 4  # the resets and each TLS stream's first packet


def _mangle(stream, seed):
    """The capture's datagrams with a third of their UDP payloads mangled (after each
    flow's first two, so that most flows are still recognised and their wrapping
    inferred; TCP is left whole, since its framing would lose the rest of the stream)."""
    rng = random.Random(seed)
    seen = collections.Counter()
    for datagram in stream:
        data = datagram.payload
        flow = frozenset(((datagram.src, datagram.sport), (datagram.dst, datagram.dport)))
        seen[flow] += 1
        if data and datagram.transport == "udp" and seen[flow] > 2 and rng.random() < 0.33:
            data = mangled_packet(data, rng)
        yield datagram._replace(payload=data)


@pytest.mark.parametrize("seed", range(4))
def test_mangled_packets_have_the_record_paths_line(seed):
    count = 0
    for name in FILES:
        clean = datagrams(name)
        for variant in range(8):
            stream = list(_mangle(clean, (seed * 100 + variant) * 1000 + FILES.index(name)))
            expected = record_path(stream, options())
            assert fast_path(stream, options()) == expected, (name, variant)
            count += sum("MALFORMED" in line for _frame, line in expected)
    assert count > 200  # mangled packets that the record path had to call malformed


def test_rendering_reader_pairs_each_record_with_its_frame():
    stream = datagrams("udp-plain.pcap")
    reader = RenderingReader(options(), lambda record: record.opcode)
    pairs = [pair for datagram in stream for pair in reader.feed(datagram)] + reader.finish()
    plain = Reader(options())
    records = [record for datagram in stream for record in plain.feed(datagram)] + plain.finish()
    assert pairs == [(record.frame, record.opcode) for record in records]


def test_a_reset_with_tlvs_is_listed_with_them():
    """Resets carry TLVs (EARLY_NEG_FLAGS, as the server's reset in the real
    udp-tls-crypt-v2 capture shows once decrypted): here appended to the plain
    capture's server reset, so the line must name them."""
    stream = datagrams("udp-plain.pcap")
    reset = next(i for i, d in enumerate(stream) if d.payload and d.payload[0] >> 3 == 8)
    stream[reset] = stream[reset]._replace(payload=stream[reset].payload + b"\x00\x01\x00\x02\x00\x01")
    expected = record_path(stream, options())
    assert any("P_CONTROL_HARD_RESET_SERVER_V2" in line and line.endswith("EARLY_NEG_FLAGS RESEND_WKC")
               for _frame, line in expected)
    assert fast_path(stream, options()) == expected


def test_session_summaries_need_records():
    with pytest.raises(ValueError):
        ListingReader(Options(sessions=True))
