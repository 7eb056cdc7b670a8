"""ovpndiag dissect on the real captures: the packets, the per-flow wrapping,
every field against tshark where tshark can read it, keys, TCP framing,
mixed captures, outputs and bad input."""

import datetime
import json
import shutil
import struct
import subprocess
import sys

import pytest

from captures import CAPTURES, MANIFEST, entry, key_path, openvpn_packets
from ovpndiag.capture.datagrams import read_transport
from ovpndiag.dissect.keyring import KeyRing
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.keys import read_key

NAMES = [c["file"] for c in MANIFEST]


def read_records(path, **options):
    reader = Reader(Options(**options))
    records = []
    for datagram in read_transport(str(path)):
        records.extend(reader.feed(datagram))
    records.extend(reader.finish())
    return reader, records


def ovpndiag(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ovpndiag", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("name", NAMES)
def test_every_openvpn_packet_is_found_in_order_with_its_frame(name):
    capture = entry(name)
    _, records = read_records(CAPTURES / name)
    expected = [(p.frame, p.sender, p.data) for p in openvpn_packets(capture)]
    seen = [(r.frame, r.sender, r.data) for r in records]
    assert seen == expected
    assert not any(r.malformed is not None for r in records)


@pytest.mark.parametrize("name", NAMES)
def test_wrapping_is_inferred_per_flow(name):
    capture = entry(name)
    _, records = read_records(CAPTURES / name)
    control = [r for r in records if r.wrapping is not None]
    first_keys = [r for r in control if r.key_id == 0]
    assert {r.wrapping for r in first_keys} == {capture["wrapping"]}
    if capture["wrapping"] == "tls-auth":
        sizes = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
        client_size = sizes[capture["client"]["auth"]]
        assert {r.hmac_size for r in first_keys} == {client_size}
    renegotiated = [r for r in control if r.key_id > 0]
    assert bool(renegotiated) == capture["renegotiation"]
    assert all(r.wrapping == "tls-crypt" and r.dynamic for r in renegotiated)


def _tshark_fields(capture):
    port, transport = capture["port"], capture["transport"]
    prefs = ["-o", "openvpn.tls_auth_detection_override:TRUE"]
    if capture["wrapping"] == "tls-auth":
        size = {"SHA1": 20, "SHA256": 32, "SHA512": 64}[capture["client"]["auth"]]
        prefs += ["-o", "openvpn.tls_auth:TRUE", "-o", f"openvpn.tls_auth_hmac_size:{size}"]
    else:
        prefs += ["-o", "openvpn.tls_auth:FALSE"]
    fields = ["frame.number", "openvpn.type", "openvpn.keyid", "openvpn.sessionid", "openvpn.pid",
              "openvpn.net_time", "openvpn.mpidarrayelement", "openvpn.rsessionid", "openvpn.mpid",
              "openvpn.peerid", "openvpn.hmac"]
    command = ["tshark", "-r", str(CAPTURES / capture["file"]), "-d", f"{transport}.port=={port},openvpn",
               *prefs, "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        values = dict(zip(fields, line.split("|")))
        if values["openvpn.type"]:
            rows[int(values["frame.number"])] = values
    return rows


def _epoch(text):
    stamp = datetime.datetime.strptime(text.split(".")[0], "%b %d, %Y %H:%M:%S")
    return int(stamp.replace(tzinfo=datetime.timezone.utc).timestamp())


TSHARK_READABLE = [c["file"] for c in MANIFEST if c["wrapping"] in ("none", "tls-auth")]


@pytest.mark.parametrize("name", TSHARK_READABLE)
def test_fields_match_tshark(name):
    """tshark reads plain and tls-auth packets right once told the HMAC size; it
    cannot read dynamic tls-crypt renegotiations, which are left out here."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is needed: apt-get install -y tshark")
    capture = entry(name)
    rows = _tshark_fields(capture)
    _, records = read_records(CAPTURES / name)
    compared = 0
    for record in records:
        if record.dynamic:
            continue
        row = rows[record.frame]
        data = record.data
        assert int(row["openvpn.type"], 16) == data[0]
        assert int(row["openvpn.keyid"]) == record.key_id
        if record.peer_id is not None:
            assert int(row["openvpn.peerid"]) == record.peer_id
            continue
        assert int(row["openvpn.sessionid"]) == record.session_id
        acks = [int(a) for a in row["openvpn.mpidarrayelement"].split(",") if a]
        assert acks == record.acks
        if record.acks:
            assert int(row["openvpn.rsessionid"]) == record.remote_session_id
        if record.message_packet_id is not None:
            assert int(row["openvpn.mpid"]) == record.message_packet_id
        if record.wrapping == "tls-auth":
            assert int(row["openvpn.pid"]) == record.replay_packet_id
            assert _epoch(row["openvpn.net_time"]) == record.net_time
            assert bytes.fromhex(row["openvpn.hmac"]) == data[9:9 + record.hmac_size]
        compared += 1
    assert compared >= 4


def test_mixed_capture_infers_each_flow_on_its_own(tmp_path):
    """SHA1 on 1194, SHA512 on 12345, tls-crypt over TCP 443 and a plain flow, merged."""
    from scapy.utils import RawPcapReader

    parts = ["udp-tls-auth-sha1.pcap", "udp-tls-auth-sha512.pcap", "tcp-tls-crypt.pcap", "udp-tls-auth-sha256.pcap"]
    frames = []
    for name in parts:
        with RawPcapReader(str(CAPTURES / name)) as reader:
            frames += [(meta.sec + meta.usec / 1e6, data) for data, meta in reader]
    frames.sort(key=lambda item: item[0])
    merged = tmp_path / "merged.pcap"
    with open(merged, "wb") as out:  # classic pcap, Ethernet, as the parts are
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for stamp, data in frames:
            out.write(struct.pack("<IIII", int(stamp), int(round((stamp % 1) * 1e6)), len(data), len(data)) + data)
    _, records = read_records(merged)
    by_port = {}
    for record in records:
        if record.key_id == 0 and record.wrapping is not None:
            server_port = record.dport if record.sender == "client" else record.sport
            by_port.setdefault((record.transport, server_port), set()).add((record.wrapping, record.hmac_size))
    assert by_port[("udp", 12345)] == {("tls-auth", 64)}
    assert by_port[("tcp", 443)] == {("tls-crypt", None)}
    assert by_port[("udp", 1194)] == {("tls-auth", 20), ("tls-auth", 32)}  # the SHA1 and the SHA256 flow
    assert len(records) == sum(len(list(openvpn_packets(entry(name)))) for name in parts)


@pytest.mark.parametrize("name", [c["file"] for c in MANIFEST if c["wrapping"] == "tls-auth"])
def test_hmac_verdicts_with_right_and_wrong_keys(name):
    capture = entry(name)
    right = KeyRing(tls_auth=read_key(key_path("keys/ta.key")))
    wrong = KeyRing(tls_auth=read_key(key_path("keys/ta-wrong.key")))
    _, with_right = read_records(CAPTURES / name, keys=right)
    _, with_wrong = read_records(CAPTURES / name, keys=wrong)
    made_with_wrong = capture["client"]["key"] == "keys/ta-wrong.key"
    checked = [r for r in with_right if r.wrapping == "tls-auth"]
    assert checked and all(r.hmac_valid is not made_with_wrong for r in checked)
    assert all(r.hmac_valid is made_with_wrong for r in with_wrong if r.wrapping == "tls-auth")
    if capture["outcome"] == "connected":
        directions = {(r.sender, r.key_direction) for r in checked if r.key_id == 0}
        client = capture["client"]["key_direction"]
        expected_client = "bidirectional" if client is None else str(client)
        assert ("client", expected_client) in directions


def test_pinned_wrong_key_direction_fails_verification():
    keys = KeyRing(tls_auth=read_key(key_path("keys/ta.key")), client_key_direction="0")
    _, records = read_records(CAPTURES / "udp-tls-auth-sha1.pcap", keys=keys)
    assert all(r.hmac_valid is False for r in records if r.wrapping == "tls-auth")


@pytest.mark.parametrize("name,key", [("udp-tls-crypt.pcap", "keys/tc.key"), ("tcp-tls-crypt.pcap", "keys/tc.key"),
                                      ("udp-tls-crypt-v2.pcap", "keys/tcv2-server.key"),
                                      ("udp-tls-crypt-v2.pcap", "keys/tcv2-client.key")])
def test_tls_crypt_is_decrypted_and_dissected_like_plain(name, key):
    material = read_key(key_path(key))
    keys = KeyRing(tls_crypt=material) if name.startswith(("udp-tls-crypt.", "tcp")) else KeyRing(tls_crypt_v2=material)
    _, records = read_records(CAPTURES / name, keys=keys)
    control = [r for r in records if r.wrapping is not None]
    assert control and all(r.hmac_valid is True for r in control)
    assert all(r.acks is not None and r.message_packet_id is not None or r.opcode == "P_ACK_V1" for r in control)
    assert any(r.tls == ["Client Hello"] for r in control)
    _, without = read_records(CAPTURES / name)
    assert all(r.acks is None and r.signed and r.hmac_valid is None for r in without if r.wrapping is not None)
    _, wrong = read_records(CAPTURES / name, keys=KeyRing(tls_crypt=read_key(key_path("keys/tc-wrong.key"))))
    if name.startswith(("udp-tls-crypt.", "tcp")):
        assert all(r.hmac_valid is False for r in wrong if r.wrapping is not None)


def test_write_decrypted_gives_wireshark_the_tls(tmp_path):
    out = tmp_path / "clear.pcap"
    result = ovpndiag("dissect", CAPTURES / "udp-tls-crypt.pcap", "--tls-crypt", key_path("keys/tc.key"),
                      "--write-decrypted", out)
    assert result.returncode == 0, result.stderr
    _, records = read_records(out)
    assert {r.wrapping for r in records if r.wrapping is not None} == {"none"}
    assert any(r.tls == ["Client Hello"] for r in records)
    tshark = subprocess.run(["tshark", "-r", str(out), "-d", "udp.port==1194,openvpn", "-Y", "tls.handshake.type == 1"],
                            capture_output=True, text=True, timeout=60)
    assert tshark.returncode == 0 and "Client Hello" in tshark.stdout
    again = ovpndiag("dissect", CAPTURES / "udp-tls-crypt.pcap", "--tls-crypt", key_path("keys/tc.key"),
                     "--write-decrypted", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_json_lines_have_the_documented_keys():
    result = ovpndiag("dissect", CAPTURES / "udp-tls-auth-sha256.pcap", "--json", "--tls-auth", key_path("keys/ta.key"))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(lines) == 21
    first = lines[0]
    for key in ("frame", "time", "src", "dst", "sport", "dport", "transport", "opcode", "opcode_value", "key_id",
                "session_id", "wrapping", "hmac_size", "replay_packet_id", "net_time", "acks",
                "message_packet_id", "payload_len", "hmac_valid"):
        assert key in first, key
    assert first["opcode"] == "P_CONTROL_HARD_RESET_CLIENT_V2" and first["frame"] == 1
    assert len(first["session_id"]) == 16 and first["hmac_size"] == 32 and first["hmac_valid"] is True
    data = [line for line in lines if line["opcode"] == "P_DATA_V2"]
    assert data and all("peer_id" in line and "wrapping" not in line for line in data)
    assert not any(key.startswith("_") for line in lines for key in line)
    key = read_key(key_path("keys/ta.key"))
    assert key.hmac(0)[:6].hex() not in result.stdout and key.hmac(1)[:6].hex() not in result.stdout


def test_line_output_and_count():
    result = ovpndiag("dissect", CAPTURES / "udp-tls-auth-sha512.pcap", "-c", "3")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3
    assert "127.0.0.1:1" in lines[0] and "-> 127.0.0.1:12345 UDP P_CONTROL_HARD_RESET_CLIENT_V2" in lines[0]
    assert "tls-auth SHA512" in lines[0] and "[Client Hello]" in lines[2]


def test_verbose_tree_shows_offsets():
    result = ovpndiag("dissect", CAPTURES / "tcp-tls-auth.pcap", "-V", "-c", "2")
    assert result.returncode == 0
    assert "\n    Session ID: 141604f10b4cc058 (offset 1, 8 bytes)\n" in result.stdout  # zero-padded hex
    assert "\n    HMAC: 0cb707890695adfcd27c8352ff001ecf998dd467 (offset 9, 20 bytes)" in result.stdout
    assert "OpenVPN over TCP: packet length 42 (the 2 bytes before the packet)" in result.stdout


def test_sessions_summary():
    result = ovpndiag("dissect", CAPTURES / "udp-reneg.pcap", "--sessions", "--json")
    sessions = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(sessions) == 1
    session = sessions[0]
    assert session["key_ids"] == [0, 1] and session["data_channel"] and session["dynamic_tls_crypt"]
    assert session["packets"]["P_CONTROL_SOFT_RESET_V1"] == 2 and session["duration"] > 2
    text = ovpndiag("dissect", CAPTURES / "fail-tls-auth-wrong-key.pcap", "--sessions").stdout
    assert text.count("Session ") == 4 and "data channel NOT reached" in text


def test_port_option_and_several_files():
    result = ovpndiag("dissect", CAPTURES / "udp-plain.pcap", CAPTURES / "tcp-tls-crypt.pcap", "-p", "443", "--json")
    files = {json.loads(line)["file"] for line in result.stdout.splitlines()}
    assert result.returncode == 0 and len(files) == 2


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"this is not a capture at all, just text\n" * 3, "not a pcap or pcapng file"),
])
def test_files_that_are_not_captures(tmp_path, content, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    result = ovpndiag("dissect", path)
    assert result.returncode == 1 and str(path) in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_truncated_capture_prints_what_it_can_then_names_the_frame(tmp_path):
    whole = (CAPTURES / "udp-tls-auth-sha1.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:len(whole) * 2 // 3])
    result = ovpndiag("dissect", cut)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.count("\n") >= 5 and "frame" in result.stderr and str(cut) in result.stderr


def test_missing_file_and_bad_options():
    missing = ovpndiag("dissect", "/nonexistent/capture.pcap")
    assert missing.returncode == 1 and "/nonexistent/capture.pcap" in missing.stderr
    bad_key = ovpndiag("dissect", CAPTURES / "udp-plain.pcap", "--tls-auth", "/nonexistent.key")
    assert bad_key.returncode == 2 and "nonexistent.key: no such file" in bad_key.stderr
    bad_auth = ovpndiag("dissect", CAPTURES / "udp-plain.pcap", "--auth", "SHA3")
    assert bad_auth.returncode == 2 and "unknown --auth digest" in bad_auth.stderr


def test_auth_and_wrapping_override_the_inference():
    _, records = read_records(CAPTURES / "udp-tls-auth-sha1.pcap", candidates=[__import__("ovpndiag.layers").layers.Wrapping.tls_auth("SHA256")])
    assert {r.hmac_size for r in records if r.wrapping is not None} == {32}
    assert any(r.malformed is not None for r in records)


def test_certificates_and_tls_handshake_where_visible():
    """TLS 1.2 shows the certificates: -V and --sessions name subject, issuer, validity."""
    sessions = ovpndiag("dissect", CAPTURES / "udp-tls12.pcap", "--sessions", "--json")
    summary = json.loads(sessions.stdout.splitlines()[0])
    assert summary["tls_version"] == "TLS 1.2" and summary["tls_cipher_suite"].startswith("TLS_ECDHE")
    server_chain = summary["certificates"]["server"]
    assert server_chain[0]["subject"].startswith("CN=ovpndiag-test-server")
    assert server_chain[0]["issuer"].startswith("CN=ovpndiag-test-ca") and server_chain[0]["not_after"]
    tree = ovpndiag("dissect", CAPTURES / "udp-tls12.pcap", "-V")
    assert "Handshake Protocol: Certificate\n" in tree.stdout and "CN=ovpndiag-test-server" in tree.stdout
    tls13 = json.loads(ovpndiag("dissect", CAPTURES / "udp-plain.pcap", "--sessions", "--json").stdout)
    assert tls13["tls_version"] == "TLS 1.3" and "certificates" not in tls13


def test_other_traffic_is_skipped_and_counted(tmp_path):
    """Frames without UDP/TCP as tshark counts them; a non-OpenVPN UDP flow on
    another port (the real udp-plain frames with their payload replaced) is not
    mistaken for OpenVPN."""
    frag = ovpndiag("dissect", CAPTURES / "udp6-frag.pcap", "--sessions").stdout.splitlines()[-1]
    tshark = subprocess.run(["tshark", "-r", str(CAPTURES / "udp6-frag.pcap"), "-Y",
                             "not udp and not tcp and not ipv6.fraghdr"],  # fragments are not skipped: reassembled
                            capture_output=True, text=True, timeout=60)
    others = len(tshark.stdout.splitlines())
    assert others and f"{others:,} frames without UDP or TCP" in frag

    from scapy.utils import RawPcapReader

    frames = []
    with RawPcapReader(str(CAPTURES / "udp-plain.pcap")) as reader:
        for data, meta in reader:
            frames.append((meta.sec, meta.usec, data))
    mixed = tmp_path / "mixed.pcap"
    with open(mixed, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for sec, usec, data in frames:
            for frame in (data, _other_protocol(data)):
                out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    reader, records = read_records(mixed)
    assert len(records) == len(frames) and reader.not_openvpn == len(frames)
    assert {r.sport for r in records} | {r.dport for r in records} >= {1194}
    assert not {5000} & ({r.sport for r in records} | {r.dport for r in records})


def _other_protocol(frame):
    """The same Ethernet/IPv4/UDP frame moved to port 5000 with a payload no
    OpenVPN packet starts with (opcode 31)."""
    frame = bytearray(frame)
    udp = 14 + (frame[14] & 0x0F) * 4
    struct.pack_into("!HHxxH", frame, udp, 5000, 5000, 0)
    frame[udp + 8] = 0xFF
    return bytes(frame)
