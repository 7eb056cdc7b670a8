"""Tens of thousands of mangled packets and hundreds of mangled capture files
through the capture reader, the OpenVPN reader and every renderer: nothing
escapes but the reader's own CaptureError."""

import base64
import json
import random

from captures import CAPTURES, MANIFEST, key_path, mangled_capture, mangled_packet
from ovpndiag.capture.pcapfile import CaptureError
from ovpndiag.capture.datagrams import read_transport
from ovpndiag.dissect.keyring import KeyRing
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.keys import read_key
from ovpndiag.render.jsonl import packet_json
from ovpndiag.render.line import packet_line
from ovpndiag.render.sessions import session_text
from ovpndiag.render.tree import packet_tree

KEYS = KeyRing(tls_auth=read_key(key_path("keys/ta.key")), tls_crypt=read_key(key_path("keys/tc.key")),
               tls_crypt_v2=read_key(key_path("keys/tcv2-server.key")))
DATAGRAMS = [d for c in MANIFEST for d in read_transport(str(CAPTURES / c["file"]))]


def _key_pieces():
    """16-byte pieces of the keys' material in hex (as a dump would show them), and the
    base64 lines of the tls-crypt-v2 key: none may ever be printed."""
    pieces = set()
    for name in ("ta.key", "tc.key", "tcv2-server.key"):
        lines = [line.strip() for line in key_path(f"keys/{name}").read_text().splitlines()
                 if line.strip() and not line.startswith(("#", "-"))]
        material = bytes.fromhex("".join(lines)) if name != "tcv2-server.key" else base64.b64decode("".join(lines))
        pieces |= {material[at:at + 16].hex() for at in range(0, len(material) - 15, 16)}
        if name == "tcv2-server.key":
            pieces |= set(lines)
    return pieces


KEY_PIECES = _key_pieces()


def _no_key_in(text):
    assert not any(piece in text.lower() or piece in text for piece in KEY_PIECES), "key material printed"


def run_reader(datagrams, keys, tree_every=0):
    """Every record rendered: one line led by its frame number, a JSON object of that frame,
    a tree on request; sessions summarised; no key material in any of it."""
    reader = Reader(Options(ports=(12345, 443), keys=keys))
    records = []
    for datagram in datagrams:
        records.extend(reader.feed(datagram))
    records.extend(reader.finish())
    for number, record in enumerate(records):
        line = packet_line(record)
        assert "\n" not in line and line.split()[0] == str(record.frame), line
        document = json.loads(packet_json(record))
        assert document["frame"] == record.frame and ("opcode" in document or "malformed" in document)
        _no_key_in(line + packet_json(record))
        if tree_every and number % tree_every == 0:
            _no_key_in(packet_tree(record))
    for number, summary in enumerate(reader.summaries(), start=1):
        _no_key_in(session_text(number, summary))
    return records


def test_mangled_datagrams_never_escape():
    rng = random.Random(20261125)
    fed = 0
    for round_number in range(60):
        mangled = [d._replace(payload=mangled_packet(d.payload, rng)) if rng.random() < 0.5 else d for d in DATAGRAMS]
        run_reader(mangled, KEYS if round_number % 2 else KeyRing(), tree_every=25)
        fed += len(mangled)
    assert fed > 20000


def test_random_datagrams_on_openvpn_and_other_ports():
    rng = random.Random(7)
    template = DATAGRAMS[0]
    datagrams = []
    for number in range(20000):
        port = rng.choice([1194, 443, 12345, 5000 + number % 50])
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70)))
        if rng.random() < 0.3:
            payload = bytes([rng.choice([0x38, 0x40, 0x20, 0x28, 0x48, 0x50, 0x58])]) + payload
        datagrams.append(template._replace(frame=number + 1, payload=payload, dport=port,
                                           sport=40000 + number % 7, transport=rng.choice(["udp", "tcp"])))
    records = run_reader(datagrams, KEYS)
    assert all(r.opcode is not None or r.malformed is not None for r in records)


def test_mangled_capture_files_raise_only_capture_errors(tmp_path):
    rng = random.Random(99)
    sources = [(CAPTURES / c["file"]).read_bytes() for c in MANIFEST]
    errors = 0
    for number in range(300):
        path = tmp_path / f"m{number}.pcap"
        path.write_bytes(mangled_capture(rng.choice(sources), rng))
        try:
            run_reader(read_transport(str(path)), KEYS)
        except CaptureError as error:
            errors += 1
            assert str(path) in str(error) and "\n" not in str(error)
    assert errors > 10
