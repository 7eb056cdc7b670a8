"""The TLS view of the control channel (ovpndiag.dissect.tls) against the real captures:
names as tshark gives them (and right where tshark is not), versions, cipher suites and
certificates as OpenVPN's logs, openssl and tshark show them, retransmissions and
reordering, bounded memory, and mangled input that never makes it raise."""

import datetime
import functools
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captures import CAPTURES, MANIFEST, entry, openvpn_packets, wrappers
from ovpndiag.dissect.tls import (ENCRYPTED_HANDSHAKE, HANDSHAKE_NAMES, MAX_RECORD, TLSStream,
                                  tls_names)
from ovpndiag.layers import HMAC_SIZES, OpenVPN, Wrapping

CONTROL_OPCODES = (4, 11)  # P_CONTROL_V1, P_CONTROL_WKC_V1
WITH_TLS = [c["file"] for c in MANIFEST if c["outcome"] == "connected" or "untrusted-cert" in c["file"]]
CONNECTED = [c["file"] for c in MANIFEST if c["outcome"] == "connected"]
TSHARK_READS = [name for name in WITH_TLS if entry(name)["wrapping"] in ("none", "tls-auth")]
TLS_CRYPT = [name for name in WITH_TLS if entry(name)["wrapping"] in ("tls-crypt", "tls-crypt-v2")]


# --------------------------------------------------------------------------- the captures' TLS


@functools.lru_cache(maxsize=None)
def control_payloads(name):
    """(frame, sender, session_id, message_packet_id, TLS payload) of every key_id 0
    P_CONTROL_V1 / P_CONTROL_WKC_V1 packet, opened with the receiving peer's keys."""
    capture = entry(name)
    kind = capture["wrapping"]
    server_view, client_view, _ = wrappers(capture)
    out, sessions = [], {}
    for packet in openvpn_packets(capture):
        opcode, key_id = packet.data[0] >> 3, packet.data[0] & 7
        if opcode in (6, 9) or key_id:  # data; renegotiations are dynamically tls-crypt wrapped
            continue
        if kind == "tls-crypt-v2" and packet.sender == "client":
            # The server opens opcodes 10/11 with its own key, the rest with the client's key.
            session_id = packet.data[1:9]
            if opcode in (10, 11):
                opened = server_view.unwrap(packet.data)
                sessions.setdefault(session_id, server_view.for_client(opened.wkc))
            else:
                opened = sessions[session_id].unwrap(packet.data)
        else:
            opened = (server_view if packet.sender == "client" else client_view).unwrap(packet.data)
        if opcode not in CONTROL_OPCODES:
            continue
        if opened.decrypted is None:  # none, tls-auth
            parsed = OpenVPN(opened.plain)
        else:
            parsed = OpenVPN(opened.decrypted, wrapping=Wrapping(kind, decrypted=True))
        out.append((packet.frame, packet.sender, parsed.session_id, parsed.message_packet_id,
                    bytes(parsed.payload)))
    return out


def follow(packets):
    """Feed packets in the order given: {(sender, session_id): (stream, [(frame, mpid, names)])}."""
    streams = {}
    for frame, sender, session_id, mpid, payload in packets:
        stream, fed = streams.setdefault((sender, session_id), (TLSStream(), []))
        fed.append((frame, mpid, stream.add(mpid, payload, frame)))
    return streams


def directions(name):
    """The streams of a capture, each attempt's client and server in capture order."""
    return follow(control_payloads(name))


def only_session(name, sender):
    streams = [v for (s, _), v in directions(name).items() if s == sender]
    assert len(streams) == 1
    return streams[0][0]


# --------------------------------------------------------------------------- tshark


def tshark_args(capture):
    args = ["-d", f"{capture['transport']}.port=={capture['port']},openvpn",
            "-o", "openvpn.tls_auth_detection_override:TRUE"]
    if capture["wrapping"] == "tls-auth":
        return args + ["-o", "openvpn.tls_auth:TRUE",
                       "-o", f"openvpn.tls_auth_hmac_size:{HMAC_SIZES[capture['auth']]}"]
    return args + ["-o", "openvpn.tls_auth:FALSE"]


TSHARK_FIELDS = ["frame.number", "_ws.col.Info", "tls.record.content_type", "tls.handshake.type",
                 "tls.handshake.ciphersuite", "tls.handshake.extensions.supported_version",
                 "tls.handshake.version", "x509sat.uTF8String"]


@pytest.fixture(scope="module")
def tshark():
    """tshark's fields for every frame of the captures it can read: {file: {frame: {field: text}}}.
    One tshark per capture (each needs its own HMAC size), all started at once."""
    assert shutil.which("tshark"), "tshark is needed (Debian package tshark; see .ci/run)"
    running = {}
    for name in TSHARK_READS:
        capture = entry(name)
        command = ["tshark", "-n", "-r", str(CAPTURES / capture["file"]), *tshark_args(capture),
                   "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
        for field in TSHARK_FIELDS:
            command += ["-e", field]
        running[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True)
    views = {}
    for name, process in running.items():
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, name
        rows = [dict(zip(TSHARK_FIELDS, line.split("\t"))) for line in out.splitlines()]
        views[name] = {int(row["frame.number"]): row for row in rows}
    return views


def info_names(info):
    """tshark's Info column as a list of names; commas inside parentheses (alerts) kept."""
    return [part for part in re.split(r", (?![^()]*\))", info.strip()) if part]


TLS_WORDS = set(HANDSHAKE_NAMES.values()) | {"Change Cipher Spec", "Application Data", ENCRYPTED_HANDSHAKE}


def continued_into(stream, mpid):
    """True when a record that began in an earlier packet ends in packet ``mpid``."""
    return any(d["packet_ids"][0] < mpid <= d["packet_ids"][1] for d in stream.details())


@pytest.mark.parametrize("name", TSHARK_READS)
def test_names_match_tshark_frame_by_frame(name, tshark):
    view = tshark[name]
    continuation_frames = 0
    for stream, fed in directions(name).values():
        assert stream.broken is None and stream.retransmissions == 0 and stream.pending == 0
        for frame, mpid, names in fed:
            theirs = view[frame]["_ws.col.Info"]
            if continued_into(stream, mpid):
                # tshark is wrong here: its OpenVPN dissector takes only a 100-byte payload
                # as a fragment with more to come, so it hands each ~1250-byte control
                # packet to the TLS dissector on its own. A record that continues into this
                # packet is "Continuation Data" (or "Ignored Unknown Record") to it, and the
                # records after it in the packet are lost. Here they complete.
                assert theirs in ("Continuation Data", "Ignored Unknown Record"), (frame, theirs)
                assert names, frame
                continuation_frames += 1
            else:
                assert names == info_names(theirs), f"frame {frame}"
    assert continuation_frames  # every handshake here has a flight longer than one packet
    # ... and nothing tshark names as TLS is missing from what was fed.
    fed_frames = {frame for _, fed in directions(name).values() for frame, _, _ in fed}
    tls_frames = {f for f, row in view.items() if TLS_WORDS & set(info_names(row["_ws.col.Info"]))}
    assert tls_frames <= fed_frames


@pytest.mark.parametrize("name", TSHARK_READS)
def test_hello_details_match_tshark(name, tshark):
    """Versions and cipher suites from Scapy's TLS layers, against tshark's fields."""
    from scapy.layers.tls.crypto.suites import _tls_cipher_suites

    view = tshark[name]
    version_names = {"0x0303": "TLS 1.2", "0x0304": "TLS 1.3"}
    hellos = 0
    for stream, _ in directions(name).values():
        for detail in stream.details():
            if detail.get("handshake_type") not in (1, 2):
                continue
            hellos += 1
            row = view[detail["frame"]]
            suites = [_tls_cipher_suites[int(v, 16)] for v in row["tls.handshake.ciphersuite"].split(",")]
            versions = [version_names[v] for v in row["tls.handshake.extensions.supported_version"].split(",") if v]
            legacy = version_names[row["tls.handshake.version"]]
            if detail["handshake_type"] == 1:
                assert detail["cipher_suites"] == suites
                assert detail["client_version"] == legacy
                assert detail["versions_offered"] == (versions or [legacy])
                assert "sni" not in detail  # OpenVPN sends no server_name
            else:
                assert [detail["cipher_suite"]] == suites
                assert detail["version"] == (versions[0] if versions else legacy)
                assert "hello_retry_request" not in detail
    assert hellos >= 2


# --------------------------------------------------------------------------- what OpenVPN logged

OPENSSL_TO_IANA = {"ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"}


def logged_control_channel(name):
    """('TLS 1.3', 'TLS_AES_256_GCM_SHA384') from the client log's "Control Channel:" line."""
    capture = entry(name)
    recorded = capture.get("derived_from") or capture["file"]  # derived captures share their source's logs
    log = (CAPTURES / "logs" / f"{Path(recorded).stem}.client.log").read_text()
    version, cipher = re.search(r"Control Channel: TLSv([\d.]+), cipher TLSv[\d.]+ (\S+),", log).groups()
    return f"TLS {version}", OPENSSL_TO_IANA.get(cipher, cipher)


@pytest.mark.parametrize("name", WITH_TLS)
def test_client_hello_first_then_server_hello_with_what_openvpn_logged(name):
    streams = directions(name)
    assert streams
    for (sender, _), (stream, _) in streams.items():
        assert stream.broken is None and stream.retransmissions == 0
        first = stream.details()[0]
        assert first["name"] == ("Client Hello" if sender == "client" else "Server Hello")
        assert first["packet_ids"] == [1, 1] and not first["encrypted"]
        if sender == "client":
            tls12_only = name == "udp-tls12.pcap"
            assert first["versions_offered"] == (["TLS 1.2"] if tls12_only else ["TLS 1.3", "TLS 1.2"])
            # TLS 1.3 suites are offered only with TLS 1.3
            assert ("TLS_AES_256_GCM_SHA384" in first["cipher_suites"]) is not tls12_only
            assert first["cipher_suites"][-1] == "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    if name in CONNECTED:
        server_hello = only_session(name, "server").details()[0]
        version, cipher = logged_control_channel(name)
        assert (server_hello["version"], server_hello["cipher_suite"]) == (version, cipher)
        assert server_hello["cipher_suite"] in only_session(name, "client").details()[0]["cipher_suites"]


@pytest.mark.parametrize("name", TLS_CRYPT)
def test_tls_crypt_captures_show_the_same_handshake_as_the_plain_ones(name):
    """tshark cannot decrypt tls-crypt: decrypted here, the TLS stream has the structure
    that tshark confirmed on the plain captures (TLS 1.3: the same records in the same
    order), every byte of it is read, and the hellos parse."""
    plain = {sender: stream.names() for (sender, _), (stream, _) in directions(
        "tcp-plain.pcap" if entry(name)["transport"] == "tcp" else "udp-plain.pcap").items()}
    for (sender, _), (stream, fed) in directions(name).items():
        assert stream.names() == plain[sender]
        assert stream.consumed == sum(len(p) for f, s, _, _, p in control_payloads(name) if s == sender)
        assert stream.pending == 0 and stream.broken is None
    server_hello = only_session(name, "server").details()[0]
    assert (server_hello["version"], server_hello["cipher_suite"]) == logged_control_channel(name)


# --------------------------------------------------------------------------- certificates


def openssl_view(path):
    """subject, issuer (as {(attribute, value)}) and validity of a PEM file, per openssl."""
    out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-subject", "-issuer", "-dates"],
                         capture_output=True, text=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines())

    def name(text):
        return {tuple(part.strip() for part in rdn.split("=", 1)) for rdn in text.split(",")}

    def when(text):
        moment = datetime.datetime.strptime(text.strip(), "%b %d %H:%M:%S %Y GMT")
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"subject": name(fields["subject"]), "issuer": name(fields["issuer"]),
            "not_before": when(fields["notBefore"]), "not_after": when(fields["notAfter"])}


def ours(certificate):
    def name(text):  # RFC 4514, as our details give it
        return {tuple(rdn.split("=", 1)) for rdn in text.split(",")}

    return {"subject": name(certificate["subject"]), "issuer": name(certificate["issuer"]),
            "not_before": certificate["not_before"], "not_after": certificate["not_after"]}


@pytest.mark.parametrize("sender, leaf", [("server", "server.crt"), ("client", "client.crt")])
def test_tls12_certificates_match_openssl_and_tshark(sender, leaf, tshark):
    stream = only_session("udp-tls12.pcap", sender)
    (certificate,) = [d for d in stream.details() if d["name"] == "Certificate"]
    assert not certificate["encrypted"] and "problem" not in certificate
    chain = certificate["certificates"]
    assert [ours(c) for c in chain] == [openssl_view(CAPTURES / "keys" / leaf),
                                        openssl_view(CAPTURES / "keys" / "ca.crt")]
    # tshark's x509 strings for that frame: issuer then subject (O, CN) of each certificate
    strings = tshark["udp-tls12.pcap"][certificate["frame"]]["x509sat.uTF8String"].split(",")
    expected = []
    for c in chain:
        for text in (c["issuer"], c["subject"]):
            parts = dict(rdn.split("=", 1) for rdn in text.split(","))
            expected += [parts["O"], parts["CN"]]
    assert strings == expected


def test_tls12_handshake_in_order_with_encrypted_finished():
    client = only_session("udp-tls12.pcap", "client").names()
    server = only_session("udp-tls12.pcap", "server").names()
    assert client[:6] == ["Client Hello", "Certificate", "Client Key Exchange", "Certificate Verify",
                          "Change Cipher Spec", ENCRYPTED_HANDSHAKE]
    assert server[:7] == ["Server Hello", "Certificate", "Server Key Exchange", "Certificate Request",
                          "Server Hello Done", "Change Cipher Spec", ENCRYPTED_HANDSHAKE]
    assert set(client[6:]) == set(server[7:]) == {"Application Data"}


@pytest.mark.parametrize("name", ["fail-untrusted-cert.pcap", "fail-untrusted-cert-tcp.pcap"])
def test_untrusted_certificate_how_far_the_handshake_got(name):
    """TLS 1.3, so the rogue client certificate is encrypted (no TLS 1.2 here): each
    attempt ends with the client's encrypted flight - Change Cipher Spec, then its
    Certificate, CertificateVerify, Finished and first key-method data as Application
    Data records - and the server says nothing more: no alert reaches the wire."""
    streams = directions(name)
    attempts = [key for key in streams if key[0] == "client"]
    assert len(attempts) >= 2  # the client starts over with a new session id
    for (sender, _), (stream, _) in streams.items():
        details = stream.details()
        if sender == "client":
            assert [d["name"] for d in details] == ["Client Hello", "Change Cipher Spec"] + ["Application Data"] * 4
            assert details[0]["versions_offered"] == ["TLS 1.3", "TLS 1.2"]
        else:
            assert details[0]["version"] == "TLS 1.3"
            assert [d["name"] for d in details][:2] == ["Server Hello", "Change Cipher Spec"]
            assert not any(d["content_type"] == 21 for d in details)
    assert len([k for k in streams if k[0] == "server"]) == len(attempts)


# --------------------------------------------------------------------------- retransmission, reordering


def session_packets(name):
    """[(sender, mpid, payload, frame)] of the capture's first session, both directions."""
    return [(sender, mpid, payload, frame) for frame, sender, _, mpid, payload in control_payloads(name)]


def reference(name):
    return {sender: stream.names() for (sender, _), (stream, _) in directions(name).items()}


@pytest.mark.parametrize("name", ["udp-plain.pcap", "udp-tls12.pcap"])
def test_duplicated_reordered_interleaved_gives_the_same_names_once(name):
    packets = session_packets(name)
    expected = reference(name)
    rng = random.Random(4)
    for trial in range(200):
        feed = packets + [rng.choice(packets) for _ in range(rng.randrange(0, 12))]  # retransmissions
        rng.shuffle(feed)  # reordered, both directions interleaved
        streams = {"client": TLSStream(), "server": TLSStream()}
        got = {"client": [], "server": []}
        for sender, mpid, payload, frame in feed:
            got[sender] += streams[sender].add(mpid, payload, frame)
        assert got == expected, trial
        assert sum(s.retransmissions for s in streams.values()) == len(feed) - len(packets)
        assert all(s.held == 0 and s.broken is None for s in streams.values())


def test_names_come_from_the_packet_that_fills_the_gap():
    server = [(mpid, payload, frame) for sender, mpid, payload, frame in session_packets("udp-tls12.pcap")
              if sender == "server"]
    stream = TLSStream()
    first, second = server[0], server[1]
    assert stream.add(second[0], second[1], 200) == [] and stream.held == 1
    assert stream.add(second[0], second[1], 201) == [] and stream.retransmissions == 1  # held, seen
    names = stream.add(first[0], first[1], 202)
    assert names == ["Server Hello", "Certificate", "Server Key Exchange", "Certificate Request",
                     "Server Hello Done"]
    assert {d["frame"] for d in stream.details()} == {202}
    assert stream.add(first[0], first[1], 203) == [] and stream.retransmissions == 2
    assert stream.add(0, b"", 204) == [] and stream.retransmissions == 2  # a reset is no retransmission
    request = stream.details()[3]
    assert request["name"] == "Certificate Request" and request["packet_ids"] == [1, 2]


def test_a_gap_that_never_fills_is_bounded_and_said():
    server = [(mpid, payload) for sender, mpid, payload, _ in session_packets("udp-plain.pcap")
              if sender == "server"]
    stream = TLSStream(max_held_packets=8, max_held_bytes=64 * 1024)
    for mpid, payload in server[1:]:  # packet-id 1 never comes
        assert stream.add(mpid, payload) == []
    assert stream.broken is None and stream.held == len(server) - 1
    for mpid in range(len(server) + 1, len(server) + 20):
        assert stream.add(mpid, server[-1][1]) == []
        assert stream.held <= 8
    assert stream.broken.startswith("message packet-id 1 never arrived")
    assert stream.add(1, server[0][1]) == [] and stream.add(10_000, b"x" * 100) == []
    # bytes cap too
    stream = TLSStream(max_held_packets=1000, max_held_bytes=10_000)
    for mpid in range(2, 50):
        stream.add(mpid, bytes(1200))
        assert stream._held_bytes <= 10_000 + 1200
    assert "never arrived" in stream.broken


# --------------------------------------------------------------------------- shapes the captures lack


def record(content_type, body, version=0x0303):
    return bytes([content_type]) + version.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def handshake_messages(name, sender):
    """Whole handshake messages (header + body) of a capture's plaintext records."""
    stream = b"".join(p for _, s, _, _, p in control_payloads(name) if s == sender)
    messages, pos = [], 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3:pos + 5], "big")
        if stream[pos] == 22:
            body = stream[pos + 5:pos + 5 + length]
            while len(body) >= 4 and body[0] in HANDSHAKE_NAMES:
                size = 4 + int.from_bytes(body[1:4], "big")
                messages.append(body[:size])
                body = body[size:]
        pos += 5 + length
    return messages


def test_one_message_across_records_and_packets_and_many_in_one_record():
    server = handshake_messages("udp-tls12.pcap", "server")[:5]  # SH, Certificate, SKE, CR, SHD
    flight = b"".join(server)
    # all five messages in one record, then the same bytes cut into 3-byte records
    one_record = record(22, flight)
    tiny_records = b"".join(record(22, flight[i:i + 3]) for i in range(0, len(flight), 3))
    expected = ["Server Hello", "Certificate", "Server Key Exchange", "Certificate Request",
                "Server Hello Done"]
    for stream_bytes in (one_record, tiny_records):
        for size in (1, 7, 100, 1250, len(stream_bytes)):
            chunks = [stream_bytes[i:i + size] for i in range(0, len(stream_bytes), size)]
            stream = TLSStream()
            got = [stream.add(pid, chunk, pid) for pid, chunk in enumerate(chunks, start=1)]
            assert [n for names in got for n in names] == expected, size
            assert stream.consumed == len(stream_bytes) and stream.pending == 0
            details = stream.details()
            assert details[1]["certificates"][0]["subject"] == "CN=ovpndiag-test-server,O=ovpndiag test material"
            assert details[0]["cipher_suite"] == "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            # each is named by the packet where its last byte arrived
            for detail in details:
                assert got[detail["frame"] - 1].count(detail["name"]) >= 1
                assert detail["packet_ids"][1] == detail["frame"]


def test_alerts_plain_and_encrypted():
    stream = TLSStream()
    assert stream.add(1, record(21, bytes([2, 48]))) == ["Alert (Level: Fatal, Description: Unknown CA)"]
    assert stream.add(2, record(21, bytes([1, 0]))) == ["Alert (Level: Warning, Description: Close Notify)"]
    assert stream.add(3, record(21, bytes(26))) == ["Encrypted Alert"]
    details = stream.details()
    assert (details[0]["level"], details[0]["description"]) == ("Fatal", "Unknown CA")
    assert details[2]["encrypted"] and "level" not in details[2]


def test_client_hello_after_a_compatibility_change_cipher_spec_is_not_encrypted():
    """TLS 1.3 after a HelloRetryRequest: CCS, then a second, plaintext ClientHello."""
    client_hello = handshake_messages("udp-plain.pcap", "client")[0]
    stream = TLSStream()
    names = stream.add(1, record(22, client_hello, 0x0301) + record(20, b"\x01")
                       + record(22, client_hello) + record(22, bytes(range(100, 140))))
    assert names == ["Client Hello", "Change Cipher Spec", "Client Hello", ENCRYPTED_HANDSHAKE]
    assert stream.details()[2]["versions_offered"] == ["TLS 1.3", "TLS 1.2"]


def test_what_is_not_tls_breaks_the_stream_with_a_reason():
    for junk, reason in [(b"GET / HTTP/1.1\r\n", "not TLS"), (record(23, b"")[:3] + b"\xff\xff", "exceeds"),
                         (bytes([22, 2, 0, 0, 1, 0]), "not TLS")]:
        stream = TLSStream()
        assert stream.add(1, junk) == []
        assert reason in stream.broken and stream.pending == 0
        assert stream.add(2, record(23, b"x")) == []  # nothing more is named
    # the caller's buffers are never kept or changed
    chunks = [bytearray(record(23, b"abc")[:4]), bytearray(record(23, b"abc")[4:])]
    stream = TLSStream()
    assert stream.add(1, chunks[0]) == [] and stream.add(2, chunks[1]) == ["Application Data"]
    assert chunks == [bytearray(record(23, b"abc")[:4]), bytearray(record(23, b"abc")[4:])]
    # an incomplete record is all that is ever buffered
    stream = TLSStream()
    big = record(23, bytes(MAX_RECORD))
    for pid, i in enumerate(range(0, len(big) - 1, 1000), start=1):
        stream.add(pid, big[i:i + 1000])
        assert stream.pending <= MAX_RECORD + 5


def test_fast_path_and_details_need_no_scapy():  # (suite names: the built-in tlssuites table)
    payloads = [p.hex() for _, s, _, _, p in control_payloads("udp-tls12.pcap") if s == "server"]
    code = (
        "import json, sys\n"
        "from ovpndiag.dissect.tls import TLSStream\n"
        "s = TLSStream()\n"
        "payloads = [bytes.fromhex(p) for p in json.load(sys.stdin)]\n"
        "loaded = set(sys.modules)\n"
        "names = [n for i, p in enumerate(payloads, 1) for n in s.add(i, p)]\n"
        "before = sorted(m for m in set(sys.modules) - loaded if m.startswith('scapy'))\n"
        "before += sorted(m for m in sys.modules if m.startswith('scapy.layers.tls'))\n"
        "s.details()\n"
        "print(json.dumps([names, before, 'scapy.layers.tls.crypto.suites' in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(payloads), capture_output=True,
                            text=True, cwd=CAPTURES.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    names, scapy_before, tls_after = json.loads(result.stdout)
    assert names[:2] == ["Server Hello", "Certificate"]
    assert scapy_before == [] and not tls_after


def test_fast_path_speed():
    """Well beyond tshark's ~150 k packets/s for a whole listing (a loose bound, for CI)."""
    packets = [(s, m, p) for s, m, p, _ in session_packets("udp-tls12.pcap")]
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        streams = {"client": TLSStream(), "server": TLSStream()}
        for sender, mpid, payload in packets:
            streams[sender].add(mpid, payload)
    rate = rounds * len(packets) / (time.perf_counter() - start)
    assert rate > 30_000, f"{rate:.0f} control packets/s"


# --------------------------------------------------------------------------- fuzz


def test_mangled_streams_never_raise():
    rng = random.Random(1194)
    sources = [[p for _, s, _, _, p in control_payloads(name) if s == sender]
               for name in ("udp-plain.pcap", "udp-tls12.pcap", "udp-tls-crypt-v2.pcap")
               for sender in ("client", "server")]
    start = time.perf_counter()
    cases = 0
    for case in range(20000):
        payloads = [bytearray(p) for p in rng.choice(sources)]
        how = case % 6
        for p in payloads:
            if how == 0 and p:  # bit flips
                for _ in range(rng.randrange(1, 4)):
                    p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
            elif how == 1:  # truncated
                del p[rng.randrange(len(p) + 1):]
            elif how == 2 and len(p) >= 5:  # huge or odd lengths in the first record header
                p[3:5] = rng.choice([b"\xff\xff", b"\x40\x00", b"\x00\x00", b"\x48\x01"])
            elif how == 3:  # random bytes
                p[:] = rng.randbytes(rng.randrange(0, 300))
            elif how == 4 and len(p) >= 9 and p[0] == 22:  # handshake lengths
                p[6:9] = rng.randbytes(3)
        held = rng.choice([2, 64])
        stream = TLSStream(max_held_packets=held)
        # The listing's names-only stream (bodies it names nothing from are skipped, not
        # buffered) names the same things at the same packets, and breaks where it breaks.
        names_only = TLSStream(max_held_packets=held, details=False)
        pids = list(range(1, len(payloads) + 1))
        if how == 5:  # packet-ids anywhere
            pids = [rng.choice([0, 1, 2, 3, 2 ** 32 - 1, rng.randrange(100)]) for _ in pids]
        named = []
        for pid, p in zip(pids, payloads):
            names = stream.add(pid, bytes(p), pid)
            assert isinstance(names, list) and all(isinstance(name, str) and name for name in names)
            assert stream.pending <= MAX_RECORD + 5 and stream.held <= 64
            assert names_only.add(pid, bytes(p), pid) == names
            assert (names_only.pending, names_only.broken) == (stream.pending, stream.broken)
            assert stream.broken or names_only.consumed == stream.consumed
            named += names
        if how != 5:
            # The same bytes in one piece name the same records: packet boundaries do not
            # change what the stream holds, mangled or not.
            whole = TLSStream()
            assert whole.add(1, b"".join(payloads)) == named and (whole.broken is None) == (stream.broken is None)
            # Delivered in any order, the packets are put back in packet-id order: the same names.
            shuffled = TLSStream(max_held_packets=len(payloads))
            order = list(zip(pids, payloads))
            rng.shuffle(order)
            assert [n for pid, p in order for n in shuffled.add(pid, bytes(p), pid)] == named
            assert shuffled.retransmissions == 0 and shuffled.held == 0
        if case % 50 == 0:
            details = stream.details()
            assert [detail["name"] for detail in details] == named[:len(details)]
            assert len(details) + stream.omitted == len(named)
            for detail in details:
                json.dumps(detail)
        cases += 1
    elapsed = time.perf_counter() - start
    assert cases == 20000 and elapsed < 10, f"{elapsed:.1f} s"


def test_tls_names_helper():
    payloads = [p for _, s, _, _, p in control_payloads("udp-plain.pcap") if s == "client"]
    assert tls_names(payloads) == reference("udp-plain.pcap")["client"]


def test_cipher_suite_names_are_scapys_without_importing_it():
    """The built-in table (tools/make_tls_suites.py) names every suite as Scapy's TLS
    table does, and --sessions / -V name them without importing Scapy's TLS package."""
    from scapy.layers.tls.crypto.suites import _tls_cipher_suites

    from ovpndiag.dissect import tls
    from ovpndiag.dissect.tlssuites import NAMES

    assert NAMES == _tls_cipher_suites
    assert [tls._suite_name(v) for v in (0x1301, 0xC02F, 0xFFFE)] == \
        ["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "0xfffe"]
    for option in ("--sessions", "-V"):
        program = ("import sys\nfrom ovpndiag.cli import main\ntry:\n"
                   f"    main(['dissect', '{option}', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
                   "sys.stdout.flush()\nprint('SCAPY', sorted(m for m in sys.modules if m.startswith('scapy')))")
        done = subprocess.run([sys.executable, "-c", program, str(CAPTURES / "udp-plain.pcap")],
                              capture_output=True, text=True, check=True)
        assert "TLS handshake" in done.stdout or "Cipher Suite" in done.stdout
        assert done.stdout.splitlines()[-1] == "SCAPY []"
