"""Write a probe's exchange as a capture file, for Wireshark or ovpndiag dissect.

The probe used ordinary sockets, so the kernel's IP/UDP/TCP headers were never
seen: they are rebuilt here around the exact OpenVPN bytes sent and received
(raw-IP link type, so no made-up Ethernet addresses; TCP with consistent
sequence numbers and OpenVPN's 2-byte framing, without the handshake).
"""

import ipaddress
import struct
from pathlib import Path

LINKTYPE_RAW = 101


class WriteError(OSError):
    pass


def write_exchange(path, exchange):
    """``exchange``: (time, (src ip, port), (dst ip, port), proto, packet bytes, sent)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapWriter

    path = Path(path)
    if path.exists():
        raise WriteError(f"{path}: already exists; remove it or choose another name")
    sequence = {}
    try:
        writer = PcapWriter(str(path), linktype=LINKTYPE_RAW, sync=True)
    except OSError as error:
        raise WriteError(f"{path}: cannot write: {error.strerror or error}") from None
    with writer:
        for stamp, (src, sport), (dst, dport), proto, data, _sent in exchange:
            ip = IPv6(src=src, dst=dst) if ipaddress.ip_address(src).version == 6 else IP(src=src, dst=dst)
            if proto == "udp":
                frame = ip / UDP(sport=sport, dport=dport) / data
            else:
                payload = struct.pack("!H", len(data)) + data
                seq = sequence.get((src, sport), 1)
                ack = sequence.get((dst, dport), 1)
                frame = ip / TCP(sport=sport, dport=dport, flags="PA", seq=seq, ack=ack) / payload
                sequence[(src, sport)] = seq + len(payload)
            frame.time = stamp
            writer.write(frame)
