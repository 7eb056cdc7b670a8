"""Frames -> transport payloads: UDP datagrams and in-order TCP stream bytes.

Glues the pieces together - ``pcapfile`` (frames), ``framedecode`` (headers),
``ipfrag`` (IP fragments) and ``tcpstream`` (TCP bytes) - and knows nothing about
what the payloads carry. ``read_transport(path)`` reads a file; ``Transport``
takes frames one at a time (live sniffing) and keeps the same state. Skipped
frames are counted in ``Counts`` for a summary.

Asked for (``Transport(events=True)``), the datagrams come with ``TransportEvent``s,
in frame order (after the datagrams of the same frame): ICMP errors about a UDP/TCP
packet and TCP connection signals (FIN, RST, a refused or unanswered SYN). Off, they
cost nothing: the notes come from code that only runs for frames without payload to
deliver or for segments with flags.
"""

import struct
from typing import Iterator, List, NamedTuple, Optional, Tuple

from .framedecode import ETHERNET, FRAGMENT, ICMP, NAMES, TCP, UDP, decode_frame, decode_reassembled, name_pair
from .ipfrag import Defragmenter
from .pcapfile import (CHUNK, MAX_PACKET, CaptureError, Source, opened, read, read_header, record_cut,
                       record_too_long, records)
from .tcpstream import (ANSWERED, FIN_SENT, REFUSED, RST_SENT, SYN_SENT, UNANSWERED, StreamReassembler)


class Datagram(NamedTuple):
    frame: int          # the frame in which this payload became complete (1-based, as tshark)
    time: float         # that frame's time, epoch seconds
    src: str            # addresses as tshark prints them: "127.0.0.1", "::1"
    dst: str
    sport: int
    dport: int
    transport: str      # "udp" or "tcp"
    payload: bytes      # UDP: the datagram's payload; TCP: the stream's new in-order bytes
    cut: int = 0        # UDP: payload bytes missing at the end, cut by the capture's snap length
    stream: int = 0     # TCP: number of this connection direction's byte stream (new per connection)
    gap: int = 0        # TCP: bytes of the stream never captured before this payload: resynchronise
    end: bool = False   # TCP: the stream's last datagram (FIN, RST, idle, end of capture); payload may be empty


ICMP_UNREACHABLE = "icmp-unreachable"   # ICMPv4 type 3 (not code 4), ICMPv6 type 1
ICMP_TOO_BIG = "icmp-too-big"           # ICMPv4 type 3 code 4 (fragmentation needed), ICMPv6 type 2
TCP_FIN, TCP_RST, TCP_REFUSED, TCP_UNANSWERED = FIN_SENT, RST_SENT, REFUSED, UNANSWERED


class TransportEvent(NamedTuple):
    """A transport signal about a flow (``Transport(events=True)``). Its first seven
    fields are a Datagram's; its length is not (Reader.feed tells them apart so).

    ``src``/``dst``/``sport``/``dport``/``transport`` name the direction it concerns:
    for an ICMP error the QUOTED packet's (the one that failed: client -> server),
    for ``refused``/``unanswered`` the SYN's (client -> server), for ``fin``/``rst``
    the direction that sent it. ``by`` is the address that gave the signal: the ICMP's
    IP source, the FIN's or RST's source; for ``unanswered`` the silent side (``dst``)."""
    frame: int          # the frame of the signal (unanswered: where the attempt ended - idle, end of capture)
    time: float
    src: str
    dst: str
    sport: int
    dport: int
    transport: str      # "udp" or "tcp" (an ICMP error: the quoted packet's)
    kind: str           # ICMP_UNREACHABLE, ICMP_TOO_BIG, TCP_FIN, TCP_RST, TCP_REFUSED, TCP_UNANSWERED
    by: str
    icmp_type: Optional[int] = None     # ICMP errors: type and code as on the wire
    icmp_code: Optional[int] = None
    mtu: Optional[int] = None           # ICMP_TOO_BIG: the MTU it reports
    syn_frame: Optional[int] = None     # refused, unanswered: the frame of the first SYN (None: not seen)
    syns: int = 0                       # refused, unanswered: SYNs sent for this attempt

    @property
    def port_unreachable(self) -> bool:
        """ICMPv4 type 3 code 3 or ICMPv6 type 1 code 4: nothing listens on ``dport``."""
        return (self.icmp_type, self.icmp_code) in ((3, 3), (1, 4))


assert len(TransportEvent._fields) != len(Datagram._fields)  # (how a reader tells them apart)


class Progress(NamedTuple):
    """Yielded by a sharded read every PROGRESS_EVERY frames: frames before ``frame``
    are read, so whatever comes later is numbered ``frame`` or more."""
    frame: int


PROGRESS_EVERY = 4096


def shard_of(sport: int, dport: int, shards: int) -> int:
    """Which of ``shards`` readers takes a flow: the same for both directions. The ports'
    XOR is mixed (Fibonacci hashing) before it is shared out: its low bits alone follow
    how clients pick ports (Linux connect() prefers even ones, a test rig counts up),
    which put 55% or more of the packets on one of two workers."""
    return ((sport ^ dport) * _MIX >> 16) % shards


_MIX = 0x9E3779B1  # 2**32 / the golden ratio: spreads neighbouring and same-parity ports evenly


class Counts:
    """What a read went through; every attribute is an int."""

    FIELDS = ("frames", "udp", "tcp_segments", "non_ip", "other_protocol", "undecodable",
              "unsupported_linktype", "truncated", "fragments", "reassembled", "fragments_dropped",
              "tcp_retransmitted", "tcp_out_of_order", "tcp_gaps", "tcp_evicted")

    def __init__(self):
        for name in self.FIELDS:
            setattr(self, name, 0)

    @property
    def skipped(self) -> int:
        """Frames that carried no UDP or TCP payload we could read."""
        return self.non_ip + self.other_protocol + self.undecodable + self.unsupported_linktype

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        return "Counts(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v) + ")"


class Transport:
    """Reassembly state for one capture or one live interface.

    ``feed()`` one frame at a time, ``flush()`` at the end; ``counts`` says what was
    skipped. The limits of the reassemblers are set on ``defrag`` / ``tcp``.
    ``events``: deliver ``TransportEvent``s too (see the module docstring)."""

    def __init__(self, defrag: Optional[Defragmenter] = None, tcp: Optional[StreamReassembler] = None,
                 shard: Optional[Tuple[int, int]] = None, events: bool = False):
        self._counts = Counts()
        self.position = [0, 0.0]  # the last frame read and its time (read_transport keeps it)
        self.defrag = defrag or Defragmenter()
        self.tcp = tcp or StreamReassembler()
        # (index, shards): deliver only the flows shard_of() gives this index; the
        # others are left to readers of the other shards (parallel dissection).
        self.shard = shard
        self.first_time = None  # of the first frame, whatever it holds: what relative times count from
        self.events = events
        self.tcp.events = events
        if events:
            self._deliver = self._deliver_events  # (else the plain staticmethod)
            self._syn_frames = {}  # TCP key -> frame of its open attempt's first SYN

    @property
    def counts(self) -> Counts:
        """What went through so far (the reassemblers keep some of it themselves)."""
        counts, tcp = self._counts, self.tcp
        counts.reassembled, counts.fragments_dropped = self.defrag.reassembled, self.defrag.dropped
        counts.tcp_retransmitted, counts.tcp_out_of_order = tcp.retransmitted, tcp.out_of_order
        counts.tcp_gaps, counts.tcp_evicted = tcp.gaps, tcp.evicted
        return counts

    def feed(self, number: int, time: float, linktype: int, data: bytes) -> List[Datagram]:
        """The datagrams one captured frame completes (usually one, possibly none or several)."""
        self._counts.frames += 1
        if self.first_time is None:
            self.first_time = time
        r = decode_frame(linktype, data)
        if r[0] is UDP:
            return self._udp(r, number, time)
        return self._other(r, number, time)

    def flush(self, number: int, time: float) -> List[Datagram]:
        """End of input: held TCP bytes (after their gaps) and an ``end`` for every open stream."""
        return self._deliver(self.tcp.flush(), number, time)

    def _udp(self, r, number, time):
        counts = self._counts
        counts.udp += 1
        _, src, dst, sport, dport, payload, cut = r
        if self.shard and shard_of(sport, dport, self.shard[1]) != self.shard[0]:
            return []
        if cut:
            counts.truncated += 1
        return [_new(Datagram, (number, time, src, dst, sport, dport, UDP, payload, cut, 0, 0, False))]

    def _other(self, r, number, time):
        """Everything but a plain UDP datagram: TCP, fragments, skipped frames."""
        counts = self._counts
        if r.__class__ is str:                  # a skipped frame: r names its counter
            setattr(counts, r, getattr(counts, r) + 1)
            return []
        kind = r[0]
        if kind is FRAGMENT:
            counts.fragments += 1
            _, key, offset, more, protocol, piece, cut, _addrs = r
            if cut:
                counts.truncated += 1           # a fragment without all its bytes never completes
                return []
            done = self.defrag.add(key, offset, more, protocol, piece, time)
            if done is None:
                return []
            r = decode_reassembled(key, *done)
            if r.__class__ is str:
                setattr(counts, r, getattr(counts, r) + 1)
                return []
            kind = r[0]
            if kind is UDP:
                return self._udp(r, number, time)
        if kind is TCP:
            counts.tcp_segments += 1
            _, src, dst, sport, dport, payload, cut, seq, flags = r
            if self.shard and shard_of(sport, dport, self.shard[1]) != self.shard[0]:
                return []
            if cut:
                counts.truncated += 1
            deliveries = self.tcp.segment((src, sport, dst, dport), seq, flags, payload, cut, time)
            return self._deliver(deliveries, number, time) if deliveries else []
        if kind is ICMP:
            counts.other_protocol += 1          # (no payload: skipped, as it always was)
            if not self.events:
                return []
            _, src, dst, sport, dport, transport, reporter, icmp_type, code, mtu = r
            if self.shard and shard_of(sport, dport, self.shard[1]) != self.shard[0]:
                return []                       # (the quoted flow's shard has it)
            too_big = icmp_type == 2 or icmp_type == 3 and code == 4
            return [TransportEvent(number, time, src, dst, sport, dport, transport,
                                   ICMP_TOO_BIG if too_big else ICMP_UNREACHABLE, reporter, icmp_type, code, mtu)]
        return []

    @staticmethod
    def _deliver(deliveries, number, time):
        return [_new(Datagram, (number, time, key[0], key[2], key[1], key[3], TCP, payload, 0, stream, gap, end))
                for key, stream, payload, gap, end in deliveries]

    def _deliver_events(self, deliveries, number, time):
        """``_deliver`` with the reassembler's notes made TransportEvents, after the datagrams."""
        datagrams, events, syn_frames = [], [], self._syn_frames
        for item in deliveries:
            if len(item) == 5:
                key, stream, payload, gap, end = item
                datagrams.append(_new(Datagram, (number, time, key[0], key[2], key[1], key[3], TCP, payload, 0,
                                                 stream, gap, end)))
                continue
            key, kind, syns = item
            if kind is SYN_SENT:
                syn_frames[key] = number
            elif kind is ANSWERED:
                syn_frames.pop(key, None)
            elif kind is FIN_SENT or kind is RST_SENT:
                events.append(TransportEvent(number, time, key[0], key[2], key[1], key[3], TCP, kind, key[0]))
            else:  # REFUSED (the RST came from the other side), UNANSWERED
                events.append(TransportEvent(number, time, key[0], key[2], key[1], key[3], TCP, kind, key[2],
                                             syn_frame=syn_frames.pop(key, None), syns=syns))
        return datagrams + events if events else datagrams


_new = tuple.__new__


def read_transport(source: Source, transport: Optional[Transport] = None, events: bool = False
                   ) -> Iterator[Datagram]:
    """Every UDP datagram and every run of new TCP stream bytes in a capture, in capture order.

    ``source`` is a path or a binary file object. Pass a ``Transport`` to read its
    ``counts`` afterwards (or to set limits). At the end of the file (or of what is
    readable) every TCP stream still open ends: its held bytes after their gap, then a
    Datagram with ``end`` set, numbered with the last frame. A damaged file raises
    ``CaptureError`` after everything readable before the damage has been yielded.
    ``events``: with no ``transport`` given, read with ``Transport(events=True)``."""
    tr = transport or Transport(events=events)
    # the last frame read and its time, for flush(); kept on the transport: when a capture
    # ends is what tells a session that stopped from one the capture cut (analyze)
    position = tr.position = [0, 0.0]
    with opened(source) as (f, name):
        header = read_header(f, name)
        if header.format == "pcap":
            frames = _read_pcap(f, name, header, tr, position)
        else:
            frames = _read_any(records(f, name, header), tr, position)
        try:
            yield from frames
        except CaptureError:
            # What was read before the damage is still delivered, then the error.
            yield from tr.flush(*position)
            raise
        yield from tr.flush(*position)


def _read_any(frames, tr, position):
    """Records from pcapfile through ``decode`` and the reassemblers."""
    udp, other = tr._udp, tr._other
    sharded = tr.shard is not None
    number = 0
    try:
        for number, time, linktype, data, _orig in frames:
            if number == 1:
                tr.first_time = time
            if sharded and not number % PROGRESS_EVERY:
                yield Progress(number)
            r = decode_frame(linktype, data)
            yield from (udp if r[0] is UDP else other)(r, number, time)
    finally:
        tr._counts.frames += number
        if number:
            position[:] = number, time


# The common cases in one unpack: Ethernet, IPv4 without options, not a fragment, then
# UDP (``word`` is its length and checksum) or TCP (``word`` is its sequence number).
_ETHER_IPV4 = struct.Struct("!12xHBxHxxHxB2x8sHHI4xH").unpack_from


def _read_pcap(f, name, header, tr, position):
    """The hot loop, for classic pcap: ``pcapfile``'s record loop, ``decode``'s Ethernet/IPv4
    UDP and TCP cases and the Datagram made in one function, on the read buffer. Calls,
    generator hops and frame copies cost more than the work itself here; every other frame
    takes the general path (``decode`` and ``Transport``), and the tests prove both paths
    give the same on every real capture and on thousands of mangled files."""
    udp, other, segment, deliver = tr._udp, tr._other, tr.tcp.segment, tr._deliver
    names = NAMES
    ethernet = header.linktype == ETHERNET
    linktype, units, endian = header.linktype, header.units, header.endian
    record = struct.Struct(endian + "IIII").unpack_from
    new = tuple.__new__
    buf, off, number, fast_udp, fast_tcp = b"", 0, 0, 0, 0
    index, shards = tr.shard or (0, 0)
    mix = _MIX
    mark = 1  # the next frame that needs a look: the first (its time), then each Progress's when sharded
    try:
        while True:
            end = len(buf)
            while end - off >= 16:
                sec, frac, incl, _orig = record(buf, off)
                if incl > MAX_PACKET:
                    raise record_too_long(name, number + 1, incl)
                start = off + 16
                stop = start + incl
                if stop > end:
                    break
                number += 1
                off = stop
                last_sec, last_frac = sec, frac  # the time of the last whole frame, for flush()
                if number == mark:  # (one test a frame for both)
                    if number == 1:
                        tr.first_time = (sec * units + frac) / units
                    else:
                        yield Progress(number)
                    mark = (number // PROGRESS_EVERY + 1) * PROGRESS_EVERY if shards else 0
                if ethernet and incl >= 48:
                    ethertype, vihl, total, frag, protocol, addrs, sport, dport, word, flags = _ETHER_IPV4(buf, start)
                    if ethertype == 0x0800 and vihl == 0x45 and not frag & 0x3FFF and 14 + total <= incl:
                        if protocol == 17:
                            length = word >> 16
                            if 8 <= length <= total - 20:
                                if shards and ((sport ^ dport) * mix >> 16) % shards != index:  # shard_of, inlined
                                    fast_udp += 1
                                    continue
                                pair = names.get(addrs) or name_pair(addrs)
                                fast_udp += 1
                                yield new(Datagram, (number, (sec * units + frac) / units, pair[0], pair[1],
                                                     sport, dport, UDP, buf[start + 42:start + 34 + length],
                                                     0, 0, 0, False))
                                continue
                        elif protocol == 6:
                            size = (flags >> 10) & 0x3C
                            if 20 <= size and 20 + size <= total:
                                if shards and ((sport ^ dport) * mix >> 16) % shards != index:
                                    fast_tcp += 1
                                    continue
                                pair = names.get(addrs) or name_pair(addrs)
                                fast_tcp += 1
                                time = (sec * units + frac) / units
                                deliveries = segment((pair[0], sport, pair[1], dport), word, flags & 0x3F,
                                                     buf[start + 34 + size:start + 14 + total], 0, time)
                                if deliveries:
                                    if len(deliveries) == 1:  # (_deliver, inlined for the common case)
                                        try:
                                            ends, stream, data, gap, closing = deliveries[0]
                                        except ValueError:  # a note (events): deliver's (try: free, 3.11)
                                            yield from deliver(deliveries, number, time)
                                            continue
                                        yield new(Datagram, (number, time, ends[0], ends[2], ends[1], ends[3], TCP,
                                                             data, 0, stream, gap, closing))
                                    else:
                                        yield from deliver(deliveries, number, time)
                                continue
                r = decode_frame(linktype, buf[start:stop])
                yield from (udp if r[0] is UDP else other)(r, number, (sec * units + frac) / units)
            chunk = read(f, name, CHUNK)
            if not chunk:
                if off < end:
                    raise record_cut(name, number + 1, buf, off, endian)
                return
            buf = buf[off:] + chunk if off < end else chunk
            off = 0
    finally:
        counts = tr._counts
        counts.frames += number
        counts.udp += fast_udp
        counts.tcp_segments += fast_tcp
        if number:  # (times are worked out above only where they are used)
            position[:] = number, (last_sec * units + last_frac) / units
