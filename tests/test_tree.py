"""dissect -V (the field tree) and -x (the hex dump) on the bundled captures, checked
against what tshark, openssl and an independent pcap parser (tests/captures.py) say
of the same frames: frame lengths, link/IP/UDP/TCP header fields, OpenVPN fields,
the ClientHello's cipher suites and extensions, certificate fields, and the bytes."""

import datetime
import re
import subprocess
import sys

import pytest

from captures import CAPTURES, entry, openvpn_packets, tshark_options
from ovpndiag.protocol import OPCODES
from ovpndiag.render.hexdump import hexdump


def ovpndiag(*args, timeout=120):
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tree(name, *args):
    """-V output of a capture, as {frame: [blocks of that frame]} (TCP: several packets a frame)."""
    capture = entry(name)
    text = ovpndiag(CAPTURES / name, "-p", capture["port"], "-V", *args)
    blocks = {}
    for block in text.split("\n\n"):
        match = re.match(r"Frame (\d+):", block)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(block)
    return blocks


def tshark(name, fields, *extra):
    """{frame: {field: value}} of tshark -T fields, with the capture's Decode As."""
    command = ["tshark", "-n", "-r", str(CAPTURES / name), *tshark_options(entry(name)), *extra, "-T", "fields",
               "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,", "-e", "frame.number"]
    for field in fields:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {}
    for line in out.splitlines():
        values = line.split("|")
        rows[int(values[0])] = dict(zip(fields, values[1:]))
    return rows


def found(pattern, block, kind=int):
    return [kind(value) for value in re.findall(pattern, block, re.MULTILINE)]


# --------------------------------------------------------------------------- frame and headers

LINK_CAPTURES = ["udp-tls-auth-sha1.pcap", "tcp-qinq.pcap", "udp-vlan.pcap", "udp-any-sll.pcap",
                 "udp-any-sll2.pcap", "udp6-null.pcap", "tcp-loop.pcap", "udp-tun-raw.pcap", "udp-frag.pcap",
                 "udp6-frag.pcap", "tcp-pcapng.pcapng", "udp6-tls-auth.pcap"]


@pytest.mark.parametrize("name", LINK_CAPTURES)
def test_frame_and_headers_match_tshark(name):
    rows = tshark(name, ["frame.len", "frame.cap_len", "ip.id", "ip.ttl", "ipv6.plen", "ipv6.hlim", "udp.srcport",
                         "udp.length", "tcp.srcport", "tcp.seq_raw", "tcp.len", "ieee8021ad.id", "vlan.id"])
    blocks = tree(name)
    assert len(blocks) >= 5
    for frame, packets in blocks.items():
        row, block = rows[frame], packets[0]
        assert found(r"^Frame \d+: (\d+) bytes on wire", block) == [int(row["frame.len"])]
        assert found(r"bytes on wire \(\d+ bits\), (\d+) bytes captured", block) == [int(row["frame.cap_len"])]
        assert found(r"^IEEE 802\.1ad, PRI: \d+, DEI: \d+, ID: (\d+)", block) == \
            [int(v) for v in row["ieee8021ad.id"].split(",") if v]
        assert found(r"^802\.1Q Virtual LAN, PRI: \d+, DEI: \d+, ID: (\d+)", block) == \
            [int(v) for v in row["vlan.id"].split(",") if v]
        if row["ip.id"]:  # (tshark lists every fragment's header in the reassembling frame: ours is the last)
            assert found(r"^    Identification: 0x[0-9a-f]{4} \((\d+)\)", block)[0] == int(row["ip.id"].split(",")[-1], 16)
            assert found(r"^    Time to Live: (\d+)", block) == [int(row["ip.ttl"].split(",")[-1])]
        if row["ipv6.plen"]:
            assert found(r"^    Payload Length: (\d+)", block) == [int(row["ipv6.plen"].split(",")[-1])]
            assert found(r"^    Hop Limit: (\d+)", block) == [int(row["ipv6.hlim"].split(",")[-1])]
        assert bool(row["ip.id"] or row["ipv6.plen"]) and "Internet Protocol Version" in block
        if row["udp.srcport"]:
            assert found(r"^User Datagram Protocol, Src Port: (\d+)", block) == [int(row["udp.srcport"])]
            lengths = found(r"^User Datagram Protocol.*\n    Length: (\d+)", block)
            assert lengths == ([int(row["udp.length"])] if "[Reassembled from IP fragments]" not in block else [])
        else:
            assert found(r"^Transmission Control Protocol, Src Port: (\d+)", block) == [int(row["tcp.srcport"])]
            assert found(r"^    Sequence Number \(raw\): (\d+)", block) == [int(row["tcp.seq_raw"])]
            assert found(r"^    TCP payload \((\d+) bytes\)", block) == [int(row["tcp.len"])]


# --------------------------------------------------------------------------- OpenVPN fields


@pytest.mark.parametrize("name", ["udp-tls-auth-sha1.pcap", "udp-tls-auth-sha512.pcap", "udp-plain.pcap",
                                  "udp-tls12.pcap"])  # (its client session id starts 0007: zero-padded)
def test_openvpn_fields_match_tshark(name):
    rows = tshark(name, ["openvpn.opcode", "openvpn.keyid", "openvpn.sessionid", "openvpn.mpidarrayelement",
                         "openvpn.rsessionid", "openvpn.mpid", "openvpn.hmac", "openvpn.pid", "openvpn.peerid"])
    compared = 0
    for frame, (block,) in tree(name).items():
        row = rows[frame]
        opcode = int(row["openvpn.opcode"], 16)
        assert found(r"= Opcode: (\S+) \(0x([0-9a-f]{2})\)", block, tuple) == [(OPCODES[opcode], f"{opcode:02x}")]
        assert found(r"= Key ID: (\d+)", block) == [int(row["openvpn.keyid"])]
        if row["openvpn.peerid"]:
            assert found(r"^    Peer ID: (\d+)", block) == [int(row["openvpn.peerid"])]
            continue
        # session ids in hex, zero-padded to 16 digits (tshark prints them in decimal)
        assert found(r"^    Session ID: ([0-9a-f]{16}) ", block, str) == [f"{int(row['openvpn.sessionid']):016x}"]
        remote = [f"{int(v):016x}" for v in row["openvpn.rsessionid"].split(",") if v]
        assert found(r"^    Remote Session ID: ([0-9a-f]{16}) ", block, str) == remote
        assert found(r"^        Message Packet-ID Array Element: (\d+)", block) == \
            [int(v) for v in row["openvpn.mpidarrayelement"].split(",") if v]
        assert found(r"^    Message Packet-ID: (\d+)", block) == [int(v) for v in row["openvpn.mpid"].split(",") if v]
        assert found(r"^    HMAC: ([0-9a-f]+) ", block, str) == [v for v in row["openvpn.hmac"].split(",") if v]
        assert found(r"^    Replay Packet-ID: (\d+)", block) == [int(v) for v in row["openvpn.pid"].split(",") if v]
        compared += 1
    assert compared >= 8


def test_offsets_and_hmac_verdicts():
    """Offsets of the tls-auth fields (over TCP, after the 2-byte length), and the HMAC
    verdict with the right key, a wrong one and none."""
    name = "tcp-tls-auth.pcap"
    right = tree(name, "--tls-auth", CAPTURES / "keys" / "ta.key")
    first = right[min(right)][0]
    assert "OpenVPN over TCP: packet length 42" in first
    assert re.search(r"^    Session ID: [0-9a-f]{16} \(offset 1, 8 bytes\)$", first, re.M)
    assert re.search(r"^    HMAC: [0-9a-f]{40} \(offset 9, 20 bytes\) \[HMAC valid, sender's key-direction 1\]$",
                     first, re.M)
    assert re.search(r"^    Replay Packet-ID: 1 \(offset 29, 4 bytes\)$", first, re.M)
    assert re.search(r"^    Message Packet-ID: 0 \(offset 38, 4 bytes\)$", first, re.M)
    packets = [block for blocks in right.values() for block in blocks]
    assert all("[HMAC valid" in block for block in packets if "OpenVPN Protocol, tls-auth" in block)
    wrong = tree(name, "--tls-auth", CAPTURES / "keys" / "ta-wrong.key")
    assert all("[HMAC INVALID]" in block for blocks in wrong.values() for block in blocks
               if "OpenVPN Protocol, tls-auth" in block)
    none = tree(name)
    assert all("[HMAC not checked: no key given]" in block for blocks in none.values() for block in blocks
               if "OpenVPN Protocol, tls-auth" in block)


def test_tls_crypt_v2_wkc_and_decryption():
    name = "udp-tls-crypt-v2.pcap"
    rows = tshark(name, ["openvpn.wkc_len"])
    blocks = tree(name, "--tls-crypt-v2", CAPTURES / "keys" / "tcv2-server.key")
    with_wkc = {frame: found(r"^    Wrapped Client Key \(WKc\): (\d+) bytes", block[0]) for frame, block in blocks.items()}
    assert {frame: [int(rows[frame]["openvpn.wkc_len"])] for frame in blocks if rows[frame]["openvpn.wkc_len"]} == \
        {frame: wkc for frame, wkc in with_wkc.items() if wkc}
    first = blocks[min(blocks)][0]
    assert "OpenVPN Protocol, tls-crypt-v2, decrypted" in first and "[tag valid]" in first
    # The WKc's metadata, opened by the server key: a key made by --genkey tls-crypt-v2-client without
    # metadata carries type 1 (a timestamp), from before the capture and not long before.
    made = re.search(r"^        \[Client key metadata: type 1, made (.*) UTC\]$", first, re.M)
    stamp = datetime.datetime.strptime(made.group(1), "%Y-%m-%d %H:%M:%S")
    captured = datetime.datetime.strptime(re.search(r"Arrival Time: (\S+ \S+)\.", first).group(1), "%Y-%m-%d %H:%M:%S")
    assert datetime.timedelta(0) < captured - stamp < datetime.timedelta(days=30)
    sealed = tree(name)[min(blocks)][0]
    assert "[tag not checked: no key given]" in sealed and re.search(r"^    Encrypted: \d+ bytes", sealed, re.M)


# --------------------------------------------------------------------------- TLS


def section(block, title, stop_indent):
    """The lines of ``block`` from the one containing ``title`` to the next line indented
    ``stop_indent`` spaces or less."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    out = []
    for line in lines[start + 1:]:
        if len(line) - len(line.lstrip()) <= stop_indent:
            break
        out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("name", ["udp-tls12.pcap", "udp-plain.pcap"])
def test_client_hello_suites_and_extensions_match_tshark(name):
    rows = tshark(name, ["tls.handshake.type", "tls.handshake.ciphersuite", "tls.handshake.extension.type",
                         "tls.handshake.extensions_supported_group"])
    hellos = 0
    for frame, (block,) in tree(name).items():
        if "Handshake Protocol: Client Hello" not in block:
            continue
        hellos += 1
        hello = section(block, "    Handshake Protocol: Client Hello", 8)
        row = rows[frame]
        assert "1" in row["tls.handshake.type"].split(",")
        assert found(r"^                Cipher Suite: \S+ \((0x[0-9a-f]{4})\)", hello, str) == \
            row["tls.handshake.ciphersuite"].split(",")
        assert found(r"^                Type: \S+ \((\d+)\)", hello) == \
            [int(v) for v in row["tls.handshake.extension.type"].split(",")]
        assert found(r"^                Supported Group: .* \((0x[0-9a-f]{4})\)", hello, str) == \
            row["tls.handshake.extensions_supported_group"].split(",")
        suites = found(r"^            Cipher Suites \((\d+) suites\)", hello)
        assert suites == [len(row["tls.handshake.ciphersuite"].split(","))]
    assert hellos == 1


def openssl(path):
    text = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-serial", "-enddate", "-startdate",
                           "-text"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split("=", 1) for line in text.splitlines()[:3])
    return {"serial": int(fields["serial"], 16), "not_after": fields["notAfter"], "not_before": fields["notBefore"],
            "signature": re.search(r"Signature Algorithm: (\S+)", text).group(1),
            "bits": int(re.search(r"Public-Key: \((\d+) bit\)", text).group(1))}


def test_certificates_match_openssl_and_tshark():
    name = "udp-tls12.pcap"
    rows = tshark(name, ["x509af.serialNumber"])
    chains = {}
    for frame, (block,) in tree(name).items():
        if "Handshake Protocol: Certificate\n" in block + "\n":
            certificates = re.findall(r"^                Certificate \d of \d \(\d+ bytes\): .*?(?=^                \S|\Z)",
                                      block, re.M | re.S)
            chains[frame] = certificates
            serials = [f"{int(s, 16):x}" for s in found(r"^                    Serial Number: 0x([0-9a-f]+)$",
                                                        block, str)]
            assert serials == [f"{int(v, 16):x}" for v in rows[frame]["x509af.serialNumber"].split(",")]
    assert len(chains) == 2  # the server's and the client's
    leaves = {}
    for certificates in chains.values():
        assert len(certificates) == 2
        subject = re.search(r"Subject: (.*)", certificates[0]).group(1)
        leaves["server.crt" if "server" in subject else "client.crt"] = certificates
    assert set(leaves) == {"server.crt", "client.crt"}
    for leaf, certificates in leaves.items():
        for shown, pem in zip(certificates, (leaf, "ca.crt")):
            expected = openssl(CAPTURES / "keys" / pem)
            assert int(re.search(r"Serial Number: 0x([0-9a-f]+)", shown).group(1), 16) == expected["serial"]
            not_after = datetime.datetime.strptime(expected["not_after"], "%b %d %H:%M:%S %Y GMT")
            assert f"Not After: {not_after:%Y-%m-%dT%H:%M:%SZ}" in shown
            not_before = datetime.datetime.strptime(expected["not_before"], "%b %d %H:%M:%S %Y GMT")
            assert f"Not Before: {not_before:%Y-%m-%dT%H:%M:%SZ}" in shown
            assert f"Signature Algorithm: {expected['signature']} (" in shown
            assert re.search(rf"Subject Public Key: \w+ ?\S*, {expected['bits']} bits", shown)


def test_tls_records_spanning_packets_are_shown_once_where_they_complete():
    """A record that spans two control packets (TLS 1.3's encrypted Certificate here)
    is shown once, in the packet that completes it, with the packet-ids it came in."""
    from ovpndiag.dissect.tls import TLSStream

    blocks = tree("udp-plain.pcap")
    spanning = {frame: re.findall(r"^        \[In message packet-ids (\d+)-(\d+)\]", block, re.M)
                for frame, (block,) in blocks.items()}
    spanning = {frame: ids for frame, ids in spanning.items() if ids}
    # what the TLS stream itself says, fed the server's control payloads in order
    stream = TLSStream()
    for packet in openvpn_packets(entry("udp-plain.pcap")):
        data = packet.data
        if packet.sender == "server" and data[0] >> 3 == 4 and data[9] <= 8:
            start = 10 + 4 * data[9] + (8 if data[9] else 0)
            stream.add(int.from_bytes(data[start:start + 4], "big"), data[start + 4:], packet.frame)
    expected = {}
    for detail in stream.details():
        first, last = detail["packet_ids"]
        if first != last:
            expected.setdefault(detail["frame"], []).append((str(first), str(last)))
    assert expected and {f: ids for f, ids in spanning.items() if f in expected} == expected
    assert all("Traceback" not in block and "Malformed" not in block for (block,) in blocks.values())


# --------------------------------------------------------------------------- -x


def undump(text):
    data = bytearray()
    for line in text.splitlines():
        # offset, two spaces, 16 hex bytes in 47 columns, three spaces, the same as ASCII
        assert re.match(r"^[0-9a-f]{4}  (?:[0-9a-f]{2} ){0,15}[0-9a-f]{2} *   ", line), line
        assert int(line[:4], 16) == len(data)
        chunk = bytes.fromhex(line[6:53])
        assert line[56:] == "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("name", ["udp-tls-auth-sha1.pcap", "tcp-tls-crypt.pcap", "udp6-frag.pcap"])
def test_hex_dump_is_the_openvpn_bytes_after_the_line(name):
    capture = entry(name)
    lines = ovpndiag(CAPTURES / name, "-p", capture["port"]).splitlines()
    text = ovpndiag(CAPTURES / name, "-p", capture["port"], "-x")
    chunks = text.split("\n\n")  # each packet: its line, a blank line, its dump, a blank line
    shown = [(chunks[i], chunks[i + 1]) for i in range(0, len(chunks) - 1, 2)]
    expected = list(openvpn_packets(capture))
    assert [line for line, _ in shown] == lines
    assert [undump(dump) for _, dump in shown] == [p.data for p in expected]


def test_hex_dump_format_is_tshark_x():
    """Our dump of a whole frame is what tshark -x prints for it."""
    from scapy.utils import RawPcapReader

    path = CAPTURES / "udp-tls12.pcap"
    frames = [data for data, _meta in RawPcapReader(str(path))][:6]
    out = subprocess.run(["tshark", "-r", str(path), "-x", "-c", "6"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.rstrip("\n").split("\n\n") == [hexdump(frame) for frame in frames]


def test_hex_dump_of_a_decrypted_packet_shows_both():
    text = ovpndiag(CAPTURES / "udp-tls-crypt.pcap", "-x", "-V", "-c", "3", "--tls-crypt",
                    CAPTURES / "keys" / "tc.key")
    dumps = re.findall(r"^OpenVPN packet \((\d+) bytes\):\n(.*?)\nDecrypted tls-crypt \((\d+) bytes\):\n(.*?)(?:\n\n|\Z)",
                       text, re.M | re.S)
    wire = [p.data for p in openvpn_packets(entry("udp-tls-crypt.pcap"))][:3]
    assert [undump(sealed) for _, sealed, _, _ in dumps] == wire
    for size, sealed, plain_size, plain in dumps:
        plain = undump(plain)
        assert int(size) == int(plain_size) == len(plain) and plain[:9] == undump(sealed)[:9]
        assert plain[49] <= 8  # the ACK count, now in clear


@pytest.mark.parametrize("args", [["--json"], ["-T", "json"], ["--sessions"], ["-V", "--sessions"]])
def test_hex_dump_where_the_output_has_no_place_for_it_is_refused_in_one_line(args):
    """-x with --json or --sessions was dropped without a word; refused as -T fields refuses it."""
    done = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(CAPTURES / "udp-plain.pcap"), "-x", *args],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, len(done.stderr.splitlines())) == (2, "", 1), done.stderr
    assert done.stderr.startswith("Error: -x dumps bytes under each packet's line or -V tree: not with --json or "
                                  "--sessions"), done.stderr
