"""The bundled real captures (captures/manifest.json), read into OpenVPN packets.

Test helper, kept simple on purpose: raw pcap records parsed with struct, and a
per-direction TCP byte stream cut at OpenVPN's 2-byte lengths.
"""

import functools
import json
import struct
from pathlib import Path
from typing import NamedTuple

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
ALL_CAPTURES = json.loads((CAPTURES / "manifest.json").read_text())
# Most tests are written for the "basic" captures: one clean session (or failing handshake)
# from its first packet. The "real-world" ones (captured mid-session, a float, a flood, a
# --try-keys run, static-key traffic) are checked against tshark by tests/test_realworld.py.
MANIFEST = [e for e in ALL_CAPTURES if e.get("group", "basic") == "basic"]
REAL_WORLD = [e for e in ALL_CAPTURES if e.get("group") == "real-world"]


def no_openvpn_packets(capture) -> bool:
    """A TCP client against a closed port: SYNs and RSTs only, no OpenVPN packet to show."""
    return capture.get("program") == "openvpn (client only)" and capture["transport"] == "tcp"


def entry(name):
    return next(e for e in ALL_CAPTURES if e["file"] == name or e["file"] == name + ".pcap")


def entries(**match):
    return [e for e in ALL_CAPTURES if all(e.get(k) == v for k, v in match.items())]


def key_path(relative):
    return CAPTURES / relative


class CapturedPacket(NamedTuple):
    frame: int  # 1-based frame in which the packet is complete
    sender: str  # "client" or "server"
    data: bytes  # one OpenVPN packet, without TCP framing


def transport_payloads(capture):
    """(frame, sender, "udp"/"tcp", tcp_seq, tcp_flags, payload) for each packet on
    the capture's port. Parsed with struct, not with ovpndiag or Scapy layers, so
    the tests' oracle does not share code with what it checks. Link types: Ethernet
    (with VLAN tags), Linux cooked v1/v2, raw IP, BSD loopback; IPv4 and IPv6, with
    IP fragments put back together naively (a datagram counts in the frame of its
    last missing fragment)."""
    from scapy.utils import RawPcapReader  # reads pcapng too

    port = capture["port"]
    fragments = {}  # (src, dst, id) -> {offset: (more, bytes)}
    reader = RawPcapReader(str(CAPTURES / capture["file"]))
    for frame, (data, meta) in enumerate(reader, start=1):
        linktype = getattr(meta, "linktype", None)
        ip = _ip_packet(reader.linktype if linktype is None else linktype, data)
        if ip is None:
            continue
        if ip[0] >> 4 == 4:
            header_len, protocol = (ip[0] & 0x0F) * 4, ip[9]
            total, ident, flags_offset = struct.unpack("!HHH", ip[2:8])
            segment = ip[header_len:total]
            if flags_offset & 0x3FFF:
                segment = _defragment(fragments, (ip[12:20], ident), (flags_offset & 0x1FFF) * 8,
                                      flags_offset & 0x2000, segment)
        else:
            protocol, segment = ip[6], ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
            if protocol == 44:  # fragment header
                protocol, offset_flags, ident = struct.unpack("!BxHI", segment[:8])
                segment = _defragment(fragments, (ip[8:40], ident), offset_flags & 0xFFF8,
                                      offset_flags & 1, segment[8:])
        if segment is None:
            continue
        sport, dport = struct.unpack("!HH", segment[:4])
        if port not in (sport, dport):
            continue
        sender = "client" if dport == port else "server"
        if protocol == 17:
            yield frame, sender, "udp", None, None, segment[8:]
        elif protocol == 6:
            seq, offset_flags = struct.unpack("!I4xH", segment[4:14])
            yield frame, sender, "tcp", seq, offset_flags & 0x3F, segment[(offset_flags >> 12) * 4:]


def _ip_packet(linktype, data):
    """The IP packet in a frame, or None for other protocols."""
    if linktype == 1:  # Ethernet, possibly with 802.1Q / 802.1ad tags
        offset = 12
        while data[offset:offset + 2] in (b"\x81\x00", b"\x88\xa8"):
            offset += 4
        ethertype, data = data[offset:offset + 2], data[offset + 2:]
        return data if ethertype in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (113, 276):  # Linux cooked capture v1 (SLL) / v2 (SLL2)
        ethertype, data = (data[14:16], data[16:]) if linktype == 113 else (data[0:2], data[20:])
        return data if ethertype in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == 101:  # raw IP
        return data
    if linktype in (0, 108):  # BSD loopback: 4-byte address family
        family = struct.unpack("!I" if linktype == 108 else "<I", data[:4])[0]
        return data[4:] if family in (2, 10, 24, 28, 30) else None
    raise ValueError(f"link type {linktype} not handled by the test oracle")


def _defragment(fragments, key, offset, more, piece):
    """The datagram's payload once every piece is in, else None."""
    pieces = fragments.setdefault(key, {})
    pieces[offset] = (more, piece)
    payload = b""
    for offset in sorted(pieces):
        more, piece = pieces[offset]
        if offset != len(payload):
            return None
        payload += piece
        if not more:
            del fragments[key]
            return payload
    return None


def openvpn_packets(capture):
    """Every OpenVPN packet of a manifest entry, in capture order."""
    streams = {}  # sender -> [next expected seq, buffered bytes]
    for frame, sender, transport, seq, flags, payload in transport_payloads(capture):
        if transport == "udp":
            yield CapturedPacket(frame, sender, payload)
            continue
        if flags & 0x02:  # SYN
            streams[sender] = [seq + 1, b""]
            continue
        if sender not in streams:  # a capture started mid-stream: from its first segment
            if not payload:
                continue
            streams[sender] = [seq, b""]
        expected, buffered = streams[sender]
        if not payload or seq != expected:  # pure ACKs, retransmissions
            continue
        buffered += payload
        streams[sender][0] = expected + len(payload)
        while len(buffered) >= 2:
            length = struct.unpack("!H", buffered[:2])[0]
            if len(buffered) < 2 + length:
                break
            yield CapturedPacket(frame, sender, buffered[2:2 + length])
            buffered = buffered[2 + length:]
        streams[sender][1] = buffered


def tcp_segments(capture):
    """The TCP payloads of a TCP capture's segments, with the sender."""
    for _frame, sender, _transport, _seq, _flags, payload in transport_payloads(capture):
        if payload:
            yield sender, payload


def wrappers(capture):
    """(opens client packets, opens server packets) for a capture, each set up as
    the receiving peer was; plus the Wrapping each sender's packets have."""
    return _wrappers(capture["file"])


@functools.lru_cache(maxsize=None)
def _wrappers(name):
    capture = entry(name)
    from ovpndiag.keys import read_key
    from ovpndiag.layers import Wrapping
    from ovpndiag.wrap import NoWrapping, TLSAuth, TLSCrypt, TLSCryptV2Client, TLSCryptV2Server

    kind, client = capture["wrapping"], capture["client"]
    if kind == "tls-auth":
        server_view = TLSAuth(read_key(key_path(capture["key"])), capture["server_key_direction"], capture["auth"])
        client_view = (TLSAuth(read_key(key_path(client["key"])), client["key_direction"], client["auth"])
                       if client["key"] else NoWrapping())  # (fail-no-tls-auth: the client has none)
        return server_view, client_view, {"client": client_view.wrapping, "server": server_view.wrapping}
    if kind == "tls-crypt":
        server_view = TLSCrypt(read_key(key_path(capture["key"])), "server")
        client_view = TLSCrypt(read_key(key_path(client["key"])), "client")
    elif kind == "tls-crypt-v2":
        server_view = TLSCryptV2Server(read_key(key_path(capture["key"])))
        client_view = TLSCryptV2Client(read_key(key_path(client["key"])))
    else:
        server_view = client_view = NoWrapping()
    return server_view, client_view, {"client": Wrapping(kind), "server": Wrapping(kind)}


def wrapping_of(capture, packet):
    """The Wrapping a captured packet has: its sender's, except that control
    packets of a renegotiation between 2.6 peers are tls-crypt wrapped (dynamic)."""
    from ovpndiag.layers import Wrapping

    if packet.data[0] & 7 and capture["renegotiation"]:
        return Wrapping("tls-crypt")
    return wrappers(capture)[2][packet.sender]


def mangled_packet(data, rng):
    """One OpenVPN packet mangled at random - the tests' one packet mangler: cut short,
    bytes flipped, a new first byte (opcode and key id), an ACK count that may fit, bytes
    appended, all new bytes, one byte dropped or inserted, a piece of itself repeated, or
    new first two bytes (a TCP length prefix, where framing is not removed)."""
    data = bytearray(data)
    choice = rng.randrange(10)
    if choice == 0:
        data = data[:rng.randrange(len(data) + 1)]
    elif choice == 1 and data:
        for _flip in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 2 and data:
        data[0] = rng.randrange(256)
    elif choice == 3 and len(data) > 10:
        data[9 + rng.randrange(min(60, len(data) - 9))] = rng.randrange(12)  # plausible ACK counts
    elif choice == 4:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    elif choice == 5:
        data = bytearray(rng.randrange(256) for _ in range(rng.randrange(80)))
    elif choice == 6 and data:
        del data[rng.randrange(len(data))]
    elif choice == 7:
        data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    elif choice == 8:
        data += data[:rng.randrange(len(data) + 1)]
    elif choice == 9 and len(data) > 2:
        data[:2] = rng.randrange(65536).to_bytes(2, "big")
    return bytes(data)


# ---- tshark as the oracle, and captures cut short (tests/test_realworld.py) -------------------

HMAC_SIZES = {"MD5": 16, "SHA1": 20, "SHA224": 28, "SHA256": 32, "SHA384": 48, "SHA512": 64}


def tshark_options(capture):
    """Decode As on the capture's port plus the wrapping preferences captures/README.md names,
    so that tshark dissects every OpenVPN packet there is."""
    port = capture["port"]
    options = ["-d", f"udp.port=={port},openvpn", "-d", f"tcp.port=={port},openvpn"]
    if capture["wrapping"] == "tls-auth":
        options += ["-o", "openvpn.tls_auth_detection_override:TRUE", "-o", "openvpn.tls_auth:TRUE",
                    "-o", f"openvpn.tls_auth_hmac_size:{HMAC_SIZES[capture['auth']]}"]
    elif capture["wrapping"] in ("tls-crypt", "tls-crypt-v2"):
        options += ["-o", "openvpn.tls_crypt:TRUE"]
    return tuple(options)


class TsharkView(NamedTuple):
    frames: int  # frames in the file
    openvpn: frozenset  # frames tshark dissects as OpenVPN
    flows: frozenset  # frames of the UDP/TCP conversations holding OpenVPN, and their IP fragments


@functools.lru_cache(maxsize=None)
def tshark_view(path, options):
    """What tshark sees in a capture file (cached for the test run: tshark is the slow part)."""
    import subprocess

    fields = ["frame.number", "frame.protocols", "udp.stream", "tcp.stream", "ip.fragment", "ipv6.fragment"]
    out = subprocess.run(["tshark", "-n", "-r", str(path), *options, "-T", "fields", "-E", "occurrence=a",
                          *[arg for field in fields for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    # An ICMP error quoting an OpenVPN datagram is dissected down to OpenVPN too; it is not one.
    rows = [row for row in rows if not {"icmp", "icmpv6"} & set(row[1].split(":"))] + \
        [[number, "icmp", "", "", "", ""] for number, protocols, *_ in rows
         if {"icmp", "icmpv6"} & set(protocols.split(":"))]
    openvpn, streams, fragments = set(), set(), set()
    for number, protocols, udp, tcp, ip_fragments, ipv6_fragments in rows:
        if "openvpn" in protocols.split(":"):
            openvpn.add(int(number))
            streams.add(("udp", udp) if udp else ("tcp", tcp))
            fragments.update(int(f) for f in (ip_fragments + "," + ipv6_fragments).split(",") if f)
    flows = {int(number) for number, _, udp, tcp, *_ in rows
             if (udp and ("udp", udp) in streams) or (tcp and ("tcp", tcp) in streams)}
    return TsharkView(len(rows), frozenset(openvpn), frozenset(flows | fragments))


def cut_capture(path, first_frame):
    """The capture file's bytes from frame ``first_frame`` (1-based) on, in the same format:
    what tcpdump would have written had it been started then. pcapng keeps every block that
    is not a packet (section, interfaces, statistics)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x0a\x0d\x0d\x0a":  # classic pcap
        endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        out, offset, frame = [data[:24]], 24, 0
        while offset + 16 <= len(data):
            length = 16 + struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
            frame += 1
            if frame >= first_frame:
                out.append(data[offset:offset + length])
            offset += length
        return b"".join(out)
    out, offset, frame, endian = [], 0, 0, "<"
    while offset + 12 <= len(data):
        if data[offset:offset + 4] == b"\x0a\x0d\x0d\x0a":  # a section header sets the byte order
            endian = "<" if data[offset + 8:offset + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        block_type, length = struct.unpack(endian + "II", data[offset:offset + 8])
        if block_type in (2, 3, 6):  # packet, simple packet, enhanced packet blocks
            frame += 1
            if frame < first_frame:
                offset += length
                continue
        out.append(data[offset:offset + length])
        offset += length
    return b"".join(out)


def mangled_capture(data, rng):
    """A capture file's bytes mangled at random - the tests' one capture-file mangler: bytes
    changed, a length-sized field set to an extreme, cut, a slice repeated or removed,
    garbage appended or inserted, or the header mangled."""
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:                                   # random bytes changed
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:                                 # a length-sized field set to an extreme
        at = rng.randrange(0, len(data) - 4)
        data[at:at + 4] = struct.pack("<I", rng.choice([0, 1, 7, 2**31, 2**32 - 1, rng.randrange(2**32)]))
    elif kind == 2:                                 # cut anywhere
        del data[rng.randrange(len(data)):]
    elif kind == 3:                                 # a slice repeated or removed
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 400))
        data[a:a] = data[a:b] if rng.random() < 0.5 else b""
        if rng.random() < 0.5:
            del data[a:b]
    elif kind == 4:                                 # garbage appended or inserted
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:                                           # the header mangled
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 64))] = rng.randrange(256)
    return bytes(data)
