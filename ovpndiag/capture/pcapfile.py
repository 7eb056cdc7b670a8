"""Capture files -> frames: classic pcap and pcapng, streamed in constant memory.

Only the file format is read here; what is inside a frame is ``decode``'s job.
Files are read in 1 MiB chunks and records are cut out of the chunk buffer, so a
capture of any size costs the same memory. Frames are numbered from 1 as tshark
numbers them. A damaged file raises ``CaptureError`` - one line naming the file
and the frame - only after every frame before the damage has been yielded, so a
caller can print what was readable and then the error.
"""

import contextlib
import os
import struct
from fractions import Fraction
from typing import BinaryIO, Iterator, NamedTuple, Tuple, Union

CHUNK = 1 << 20
# Wireshark's limit for a packet of almost every link type (WTAP_MAX_PACKET_SIZE_STANDARD)
# and libpcap's largest snap length: anything bigger is a corrupt length field, and
# refusing it keeps a corrupt file from making us buffer gigabytes.
MAX_PACKET = 262144
# A pcapng block can also carry comments and other options; Wireshark refuses blocks over 16 MiB.
MAX_BLOCK = 16 * 1024 * 1024


class CaptureError(Exception):
    """A capture file that cannot be read (further); the message is one line."""


class Frame(NamedTuple):
    number: int     # 1-based position in the capture, as tshark counts
    time: float     # epoch seconds (0.0 for pcapng simple packet blocks, which have none);
                    # an Instant where a float cannot hold the time to the microsecond
    linktype: int   # LINKTYPE_* of the frame's interface (1 Ethernet, 113 SLL, 276 SLL2, ...)
    data: bytes     # the captured bytes
    orig_len: int   # length on the wire; more than len(data) when cut by the snap length


Source = Union[str, "os.PathLike[str]", BinaryIO]


class Instant(float):
    """A frame time a float cannot hold to the microsecond: a pcapng interface's
    ``if_tsoffset``/``if_tsresol`` can put frames in any year from about 292 billion
    years BC to as far after 1970. It is the nearest float (to print, compare, store in
    JSON), and ``exact`` keeps the time itself, so that the difference of two Instants
    (the listing's time since the first frame, a session's duration) is exact, as
    tshark shows it. Only times outside +-2**32 s (1833..2106) are made Instants:
    inside, a float's error is under a quarter of a microsecond."""

    __slots__ = ("exact",)

    def __new__(cls, exact: Fraction):
        instant = float.__new__(cls, exact)  # float(Fraction) is correctly rounded
        instant.exact = exact
        return instant

    def __sub__(self, other):
        if other.__class__ is Instant:
            return float(self.exact - other.exact)
        return float.__sub__(self, other)

    def __reduce__(self):
        return Instant, (self.exact,)


# Beyond this many seconds from 1970 a float's step exceeds a microsecond's half.
FLOAT_EXACT = float(1 << 32)

# Classic pcap magic numbers (as read little-endian) -> (byte order, timestamp units per second).
_PCAP_MAGIC = {
    0xA1B2C3D4: ("<", 1_000_000),
    0xD4C3B2A1: (">", 1_000_000),
    0xA1B23C4D: ("<", 1_000_000_000),
    0x4D3CB2A1: (">", 1_000_000_000),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


def read_frames(source: Source) -> Iterator[Frame]:
    """Every frame of a pcap or pcapng file (a path or a binary file object), in file order."""
    new = tuple.__new__
    for record in scan(source):
        yield new(Frame, record)


def scan(source: Source) -> Iterator[Tuple[int, float, int, bytes, int]]:
    """``read_frames`` as plain ``(number, time, linktype, data, orig_len)`` tuples: the
    fast path for readers that unpack each record at once anyway."""
    with opened(source) as (f, name):
        yield from records(f, name, read_header(f, name))


@contextlib.contextmanager
def opened(source: Source):
    """``(binary file, name for messages)``; a path is opened (and closed) here. A
    gzip-compressed capture (told by its magic, as tshark does) is decompressed as it
    is read - a file object too, if it can ``peek``."""
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<capture>"))
        yield _gunzipped(source, name), name
        return
    name = os.fspath(source)
    try:
        f = open(name, "rb")
    except OSError as e:
        raise CaptureError(f"{name}: {e.strerror or e}") from None
    with f:
        yield _gunzipped(f, name), name


def _gunzipped(f, name):
    peek = getattr(f, "peek", None)
    try:
        if peek is None or peek(2)[:2] != b"\x1f\x8b":
            return f
    except OSError:
        return f  # (read() then says what is wrong)
    return _Gunzip(f, name)


class _Gunzip:
    """A gzip stream read as the capture inside it; damage or an early end is a
    CaptureError, raised after everything before it was read."""

    def __init__(self, f, name):
        import gzip

        self.gzip, self.name, self.given, self.failure = gzip.GzipFile(fileobj=f, mode="rb"), name, 0, None

    def read(self, size):
        import zlib

        if self.failure is not None:
            raise self.failure
        data = b""
        try:
            while len(data) < size:  # whole chunks, as a plain file gives them
                more = self.gzip.read1(size - len(data))
                if not more:
                    break
                data += more
        except EOFError:
            self.failure = CaptureError(f"{self.name}: compressed capture truncated (the gzip stream ends "
                                        f"after {self.given + len(data):,} bytes of capture)")
        except (OSError, zlib.error) as error:
            self.failure = CaptureError(f"{self.name}: corrupt gzip stream after "
                                        f"{self.given + len(data):,} bytes of capture: {error}")
        if self.failure is not None and not data:
            raise self.failure
        self.given += len(data)
        return data


class Header(NamedTuple):
    format: str         # "pcap" or "pcapng"
    endian: str         # struct byte order of a classic pcap's records
    units: int          # a classic pcap's timestamp fractions per second
    linktype: int       # a classic pcap's link type
    data: bytes         # the bytes read so far


def read_header(f, name: str) -> Header:
    """The file's format from its first bytes (which a pcapng reader reads again)."""
    head = read(f, name, 24)
    if not head:
        raise CaptureError(f"{name}: empty file, not a pcap or pcapng capture")
    if len(head) < 4:
        raise CaptureError(f"{name}: {len(head)} bytes, too short for a pcap or pcapng file")
    magic = struct.unpack_from("<I", head)[0]
    if magic == _PCAPNG_SHB:
        return Header("pcapng", "<", 0, 0, head)
    if magic in (0xA1B2CD34, 0x34CDB2A1):
        raise CaptureError(f"{name}: modified (Kuznetzov) pcap format is not supported")
    if magic not in _PCAP_MAGIC:
        raise CaptureError(f"{name}: not a pcap or pcapng file")
    if len(head) < 24:
        raise CaptureError(f"{name}: pcap file header truncated ({len(head)} of 24 bytes)")
    endian, units = _PCAP_MAGIC[magic]
    # The upper bits of the link-type field carry FCS information, not the link type.
    return Header("pcap", endian, units, struct.unpack_from(endian + "I", head, 20)[0] & 0xFFFF, head)


def records(f, name: str, header: Header):
    """``scan``'s records of an opened file whose header has been read."""
    if header.format == "pcapng":
        return _scan_pcapng(f, name, header.data)
    return _scan_pcap(f, name, header)


def read(f, name: str, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as e:
        raise CaptureError(f"{name}: read error: {e.strerror or e}") from None


# The errors of a classic pcap record, shared with the fast path (datagrams.py).

def record_too_long(name: str, number: int, incl: int) -> CaptureError:
    return CaptureError(f"{name}: frame {number}: corrupt record: captured length "
                        f"{incl} exceeds {MAX_PACKET} bytes")


def record_cut(name: str, number: int, buf: bytes, off: int, endian: str) -> CaptureError:
    """The file ended inside the record at ``buf[off:]``."""
    left = len(buf) - off
    if left < 16:
        return CaptureError(f"{name}: frame {number}: record header truncated "
                            f"(file ends {left} bytes into the 16-byte header)")
    incl = struct.unpack_from(endian + "I", buf, off + 8)[0]
    return CaptureError(f"{name}: frame {number}: record truncated (file ends "
                        f"{left - 16} bytes into a {incl}-byte packet)")


# --------------------------------------------------------------------------- classic pcap

def _scan_pcap(f, name, header):
    linktype, units = header.linktype, header.units
    record = struct.Struct(header.endian + "IIII").unpack_from
    buf, off, number = b"", 0, 0
    while True:
        # Cut every complete record out of the buffer.
        end = len(buf)
        while end - off >= 16:
            sec, frac, incl, orig = record(buf, off)
            if incl > MAX_PACKET:
                raise record_too_long(name, number + 1, incl)
            start = off + 16
            stop = start + incl
            if stop > end:
                break
            number += 1
            # One correctly rounded division: exact to the microsecond, like tshark prints it.
            yield number, (sec * units + frac) / units, linktype, buf[start:stop], orig
            off = stop
        chunk = read(f, name, CHUNK)
        if not chunk:
            if off < end:
                raise record_cut(name, number + 1, buf, off, header.endian)
            return
        buf = buf[off:] + chunk if off < end else chunk
        off = 0


# --------------------------------------------------------------------------- pcapng

class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    units: int          # timestamp units per second (if_tsresol)
    offset: int         # seconds added to every timestamp (if_tsoffset)


def _scan_pcapng(f, name, head):
    buf, off, pos = head, 0, 0     # pos: file offset of buf[0], for messages
    number = 0
    endian = "<"
    u32 = struct.Struct("<I").unpack_from       # these return 1-tuples
    interfaces = []
    epb = struct.Struct("<IIIII").unpack_from
    opb = struct.Struct("<H2xIIII").unpack_from  # obsolete packet block: a 16-bit interface id

    def fail(offset, what):
        raise CaptureError(f"{name}: frame {number + 1}: corrupt pcapng block at byte {offset}: {what}")

    while True:
        end = len(buf)
        # Complete blocks in the buffer.
        while end - off >= 12:
            btype, blen = struct.unpack_from(endian + "II", buf, off)
            if btype == _PCAPNG_SHB:
                # A new section: its byte order may differ from the previous one's.
                bom = struct.unpack_from("<I", buf, off + 8)[0]
                if bom == _BYTE_ORDER_MAGIC:
                    endian = "<"
                elif bom == 0x4D3C2B1A:
                    endian = ">"
                else:
                    fail(pos + off, "section header with a bad byte-order magic")
                u32 = struct.Struct(endian + "I").unpack_from
                epb = struct.Struct(endian + "IIIII").unpack_from
                opb = struct.Struct(endian + "H2xIIII").unpack_from
                blen = u32(buf, off + 4)[0]
                if blen < 28:
                    fail(pos + off, f"section header length {blen} is under 28")
            if blen % 4 or blen < 12:
                fail(pos + off, f"block length {blen} is not a multiple of 4 of at least 12")
            if blen > MAX_BLOCK:
                fail(pos + off, f"block length {blen} exceeds {MAX_BLOCK}")
            stop = off + blen
            if stop > end:
                break
            if u32(buf, stop - 4)[0] != blen:
                fail(pos + off, f"trailing block length {u32(buf, stop - 4)[0]} differs from {blen}")
            if btype == 6 or btype == 2:  # enhanced / obsolete packet block: one layout but for
                if blen < 32:             # the width of the interface field
                    fail(pos + off, f"{'enhanced packet' if btype == 6 else 'packet'} block length {blen} "
                                    f"is under 32")
                iface, hi, lo, incl, orig = (epb if btype == 6 else opb)(buf, off + 8)
                if incl > blen - 32 or incl > MAX_PACKET:
                    fail(pos + off, f"captured length {incl} does not fit the block")
                if iface >= len(interfaces):
                    fail(pos + off, f"packet of undeclared interface {iface}")
                lt, _snap, units, toff = interfaces[iface]
                number += 1
                time = ((hi << 32) | lo) / units + toff
                if not -FLOAT_EXACT < time < FLOAT_EXACT:  # far from 1970: exact (and rare)
                    time = Instant(Fraction((hi << 32) | lo, units) + toff)
                yield number, time, lt, buf[off + 28:off + 28 + incl], orig
            elif btype == _PCAPNG_SHB:
                interfaces = []
            elif btype == 1:                                    # interface description block
                if blen < 20:
                    fail(pos + off, f"interface description block length {blen} is under 20")
                lt, snap = struct.unpack_from(endian + "H2xI", buf, off + 8)
                units, toff = _interface_options(buf, off + 16, stop - 4, endian)
                interfaces.append(_Interface(lt, snap, units, toff))
            elif btype == 3:                                    # simple packet block
                if blen < 16:
                    fail(pos + off, f"simple packet block length {blen} is under 16")
                if not interfaces:
                    fail(pos + off, "simple packet block before any interface")
                orig = u32(buf, off + 8)[0]
                incl = min(orig, blen - 16)
                if interfaces[0].snaplen:
                    incl = min(incl, interfaces[0].snaplen)
                if incl > MAX_PACKET:
                    fail(pos + off, f"captured length {incl} exceeds {MAX_PACKET}")
                number += 1
                yield number, 0.0, interfaces[0].linktype, buf[off + 12:off + 12 + incl], orig
            # Other blocks (name resolution, statistics, secrets, custom) say nothing about frames.
            off = stop
        chunk = read(f, name, CHUNK)
        if not chunk:
            left = end - off
            if left == 0:
                return
            if left < 12:
                raise CaptureError(f"{name}: frame {number + 1}: block header truncated "
                                   f"(file ends {left} bytes into a pcapng block)")
            blen = struct.unpack_from(endian + "I", buf, off + 4)[0]
            raise CaptureError(f"{name}: frame {number + 1}: block truncated (file ends "
                               f"{left} bytes into a {blen}-byte pcapng block)")
        pos += off
        buf = buf[off:] + chunk if off < end else chunk
        off = 0


def _interface_options(buf, off, stop, endian):
    """(timestamp units per second, offset in seconds) from an interface's options."""
    units, toff = 1_000_000, 0
    while off + 4 <= stop:
        code, length = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:                                           # opt_endofopt
            break
        value = buf[off + 4:off + 4 + length]
        if code == 9 and length >= 1:                           # if_tsresol
            exp = value[0] & 0x7F
            # MSB set: a power of 2; otherwise a power of 10. Absurd exponents would
            # make float timestamps meaningless: keep microseconds then.
            if exp <= 60:
                units = 2 ** exp if value[0] & 0x80 else 10 ** exp
        elif code == 14 and length >= 8:                        # if_tsoffset
            toff = struct.unpack_from(endian + "q", value)[0]
        off += 4 + length + (-length % 4)
    return units, toff
