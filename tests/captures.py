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
MANIFEST = json.loads((CAPTURES / "manifest.json").read_text())


def entry(name):
    return next(e for e in MANIFEST if e["file"] == name or e["file"] == name + ".pcap")


def entries(**match):
    return [e for e in MANIFEST if all(e.get(k) == v for k, v in match.items())]


def key_path(relative):
    return CAPTURES / relative


class CapturedPacket(NamedTuple):
    frame: int  # 1-based frame in which the packet is complete
    sender: str  # "client" or "server"
    data: bytes  # one OpenVPN packet, without TCP framing


def transport_payloads(capture):
    """(frame, sender, "udp"/"tcp", tcp_seq, tcp_flags, payload) for each packet on
    the capture's port. Parsed with struct, not with ovpndiag or Scapy layers, so
    the tests' oracle does not share code with what it checks. The captures are
    Ethernet frames (tcpdump -i lo) with IPv4 or IPv6."""
    from scapy.utils import RawPcapReader

    port = capture["port"]
    for frame, (data, _meta) in enumerate(RawPcapReader(str(CAPTURES / capture["file"])), start=1):
        ethertype = struct.unpack("!H", data[12:14])[0]
        if ethertype == 0x0800:
            header_len, protocol = (data[14] & 0x0F) * 4, data[23]
            total = struct.unpack("!H", data[16:18])[0]
            segment = data[14 + header_len:14 + total]
        elif ethertype == 0x86DD:
            protocol = data[20]
            segment = data[54:54 + struct.unpack("!H", data[18:20])[0]]
        else:
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
        client_view = TLSAuth(read_key(key_path(client["key"])), client["key_direction"], client["auth"])
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
