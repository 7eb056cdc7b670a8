#!/usr/bin/env python3
"""Re-encapsulate a real Ethernet capture into a link type Linux cannot record, or cut it.

    python3 captures/derive.py SOURCE.pcap DEST.pcap LINKTYPE [--big-endian]
    python3 captures/derive.py SOURCE.pcap DEST.pcap --from-seconds S

Each frame's Ethernet header (and any VLAN tags) is replaced by the link type's own
header; timestamps, original lengths and the IP packets (everything from the IP header
on) are kept byte for byte, so the result shows the same OpenVPN traffic as the real
capture it comes from. Frames that carry no IP are left out.

- 101 raw IP: no header at all.
- 0 BSD loopback (DLT_NULL, as macOS ``tcpdump -i lo0`` writes): the 4-byte address family
  in the writing host's byte order - the file's - with macOS's values (AF_INET 2, AF_INET6 30).
- 108 OpenBSD loopback (DLT_LOOP): the address family in network byte order, with OpenBSD's
  values (AF_INET 2, AF_INET6 24).

``--big-endian`` writes the file as a big-endian host would (magic a1b2c3d4 in that order).
``--from-seconds S`` instead keeps the frames from the first one at least S seconds after the
source's first on, byte for byte (link type, timestamps and all): the capture tcpdump would
have written had it been started then, in the middle of whatever sessions were running.
Used by record.py for the ``Derived`` captures in the manifest; standard library only.
"""

import argparse
import struct
import sys
from pathlib import Path

FAMILIES = {0: {4: 2, 6: 30}, 108: {4: 2, 6: 24}}


def read_ethernet_pcap(path: Path):
    """(header fields, [(sec, frac, orig_len, frame)]) of a classic Ethernet pcap."""
    data = path.read_bytes()
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[data[:4]]
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack(endian + "IHHiIII", data[:24])
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, not Ethernet")
    records, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        records.append((sec, frac, orig, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return (magic, major, minor, zone, sigfigs, snaplen), records


def derive(source: Path, dest: Path, linktype: int, big_endian: bool = False) -> int:
    """Write ``dest``; returns the number of frames written."""
    (magic, major, minor, zone, sigfigs, snaplen), records = read_ethernet_pcap(source)
    endian = ">" if big_endian else "<"
    out = [struct.pack(endian + "IHHiIII", magic, major, minor, zone, sigfigs, snaplen, linktype)]
    written = 0
    for sec, frac, orig, frame in records:
        offset = 12
        while frame[offset:offset + 2] in (b"\x81\x00", b"\x88\xa8"):
            offset += 4
        ethertype = frame[offset:offset + 2]
        if ethertype not in (b"\x08\x00", b"\x86\xdd"):
            continue
        packet = frame[offset + 2:]
        version = 4 if ethertype == b"\x08\x00" else 6
        if linktype == 101:
            header = b""
        elif linktype == 0:
            header = struct.pack(endian + "I", FAMILIES[0][version])
        elif linktype == 108:
            header = struct.pack("!I", FAMILIES[108][version])
        else:
            raise ValueError(f"link type {linktype} not supported")
        new = header + packet
        out.append(struct.pack(endian + "IIII", sec, frac, len(new), orig - offset - 2 + len(header)))
        out.append(new)
        written += 1
    dest.write_bytes(b"".join(out))
    return written


def cut(source: Path, dest: Path, seconds: float) -> int:
    """Write ``dest``: the classic pcap ``source`` from its first frame at least ``seconds``
    after its first frame on. Returns the number of frames written."""
    data = source.read_bytes()
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[data[:4]]
    scale = 1e-9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    out, off, first, keep, written = [data[:24]], 24, None, False, 0
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        when = sec + frac * scale
        first = when if first is None else first
        keep = keep or when >= first + seconds
        if keep:
            out.append(data[off:off + 16 + incl])
            written += 1
        off += 16 + incl
    dest.write_bytes(b"".join(out))
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("linktype", type=int, choices=(0, 101, 108), nargs="?")
    ap.add_argument("--big-endian", action="store_true")
    ap.add_argument("--from-seconds", type=float, metavar="S", help="cut instead: the frames from S seconds in")
    args = ap.parse_args()
    if (args.linktype is None) == (args.from_seconds is None):
        ap.error("give a LINKTYPE or --from-seconds")
    if args.from_seconds is not None:
        n = cut(args.source, args.dest, args.from_seconds)
    else:
        n = derive(args.source, args.dest, args.linktype, args.big_endian)
    print(f"{args.dest}: {n} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
