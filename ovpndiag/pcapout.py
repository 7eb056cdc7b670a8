"""Write OpenVPN packets as a capture file (classic pcap, raw-IP link type).

Used where ovpndiag has the OpenVPN bytes but not the frames they came in: the
probe's exchange (sent from an ordinary socket), a capture with tls-crypt
removed (``dissect --write-decrypted``), packets sniffed from a cooked socket.
IPv4/IPv6 and UDP/TCP headers are rebuilt around the bytes, with correct
lengths and checksums; TCP gets consistent sequence numbers and OpenVPN's 2-byte
framing (the handshake itself is not invented). Never overwrites a file, and a
run that fails before its first packet leaves no file behind (a header alone would
pass for a capture of nothing). Times keep their 32 seconds bits, as editcap stores
a pcapng time outside 1970..2106 in a classic pcap.
"""

import ipaddress
import struct
import sys
from pathlib import Path
from typing import Optional

from .checksum import internet_checksum

LINKTYPE_RAW = 101
_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)


class WriteError(OSError):
    pass


class CaptureWriter:
    def __init__(self, path):
        self.path = Path(path)
        try:
            self.file = open(self.path, "xb")
        except FileExistsError:
            raise WriteError(f"{self.path}: already exists; remove it or choose another name") from None
        except OSError as error:
            raise WriteError(f"{self.path}: cannot write: {error.strerror or error}") from None
        self.file.write(_HEADER)
        self.packets = 0
        self.sequence = {}  # TCP: (address, port) -> next sequence number

    def write_ip(self, time: float, packet: bytes):
        # An Instant (a pcapng time far from 1970) gives its exact time, which a float cannot.
        seconds, fraction = divmod(getattr(time, "exact", time), 1)
        micros = round(fraction * 1_000_000)
        if micros == 1_000_000:
            seconds, micros = seconds + 1, 0
        self.file.write(struct.pack("<IIII", int(seconds) & 0xFFFFFFFF, micros, len(packet), len(packet)))
        self.file.write(packet)
        self.packets += 1

    def write_openvpn(self, time, src, sport, dst, dport, transport, data):
        """One OpenVPN packet, wrapped in the IP and UDP or TCP headers of its flow."""
        if transport == "udp":
            segment = _udp(src, dst, sport, dport, data)
            protocol = 17
        else:
            payload = struct.pack("!H", len(data)) + data
            seq = self.sequence.get((src, sport), 1)
            ack = self.sequence.get((dst, dport), 1)
            self.sequence[(src, sport)] = (seq + len(payload)) & 0xFFFFFFFF
            segment = _tcp(src, dst, sport, dport, seq, ack, payload)
            protocol = 6
        self.write_ip(time, _ip(src, dst, protocol, segment))

    def close(self, failed: Optional[bool] = None):
        """Close the file; if the run ``failed`` before its first packet, remove it (it is
        ours: it was created here, never an existing file). ``failed`` None: whether an
        exception is on its way out, as when called from a ``finally`` clause."""
        if self.file.closed:
            return
        if failed is None:
            failed = sys.exc_info()[0] is not None
        self.file.close()
        if failed and not self.packets:
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, kind, _error, _traceback):
        self.close(failed=kind is not None)

    def write_exchange(self, exchange):
        """The probe's exchange: (time, (src, port), (dst, port), proto, bytes, sent)."""
        for stamp, (src, sport), (dst, dport), proto, data, _sent in exchange:
            self.write_openvpn(stamp, src, sport, dst, dport, proto, data)


def recorded(writer: Optional[CaptureWriter], run, exchange, failed):
    """``run()``'s result, with its exchange (``exchange(result)``) saved by ``writer``
    (None: not saved). The file goes if ``run`` raised or ``failed(result)``."""
    try:
        result = run()
    except BaseException:
        if writer is not None:
            writer.close(failed=True)
        raise
    if writer is not None:
        writer.write_exchange(exchange(result))
        writer.close(failed=failed(result))
    return result


def _pseudo(src, dst, protocol, length):
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        return a.packed + b.packed + struct.pack("!BBH", 0, protocol, length)
    return a.packed + b.packed + struct.pack("!IxxxB", length, protocol)


def _udp(src, dst, sport, dport, data):
    length = 8 + len(data)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = internet_checksum(_pseudo(src, dst, 17, length) + header + data) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, checksum) + data


def _tcp(src, dst, sport, dport, seq, ack, data):
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0)
    checksum = internet_checksum(_pseudo(src, dst, 6, len(header) + len(data)) + header + data)
    return header[:16] + struct.pack("!H", checksum) + header[18:] + data


def _ip(src, dst, protocol, segment):
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 6:
        return struct.pack("!IHBB", 6 << 28, len(segment), protocol, 64) + a.packed + b.packed + segment
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0x4000, 64, protocol, 0,
                         a.packed, b.packed)
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:] + segment
