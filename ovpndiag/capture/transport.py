"""Frames -> transport payloads: UDP datagrams and in-order TCP stream bytes.

Glues the pieces together - ``pcapfile`` (frames), ``decode`` (headers),
``ipfrag`` (IP fragments) and ``tcpstream`` (TCP bytes) - and knows nothing about
what the payloads carry. ``read_transport(path)`` reads a file; ``Transport``
takes frames one at a time (live sniffing) and keeps the same state. Skipped
frames are counted in ``Counts`` for a summary.
"""

from typing import Iterator, List, NamedTuple, Optional

from .decode import FRAGMENT, TCP, UDP, decode, decode_reassembled
from .ipfrag import Defragmenter
from .pcapfile import CaptureError, Source, scan
from .tcpstream import StreamReassembler


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
    skipped. The limits of the reassemblers are set on ``defrag`` / ``tcp``."""

    def __init__(self, defrag: Optional[Defragmenter] = None, tcp: Optional[StreamReassembler] = None):
        self.counts = Counts()
        self.defrag = defrag or Defragmenter()
        self.tcp = tcp or StreamReassembler()

    def feed(self, number: int, time: float, linktype: int, data: bytes) -> List[Datagram]:
        """The datagrams one captured frame completes (usually one, possibly none or several)."""
        self.counts.frames += 1
        r = decode(linktype, data)
        if r[0] is UDP:
            self.counts.udp += 1
            _, src, dst, sport, dport, payload, cut = r
            if cut:
                self.counts.truncated += 1
            return [Datagram(number, time, src, dst, sport, dport, UDP, payload, cut)]
        return self._other(r, number, time)

    def flush(self, number: int, time: float) -> List[Datagram]:
        """End of input: held TCP bytes (after their gaps) and an ``end`` for every open stream."""
        out = self._deliver(self.tcp.flush(), number, time)
        self._sync_tcp_counts()
        return out

    def _other(self, r, number, time):
        """Everything but a plain UDP datagram: TCP, fragments, skipped frames."""
        counts = self.counts
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
            before = self.defrag.dropped
            done = self.defrag.add(key, offset, more, protocol, piece, time)
            counts.fragments_dropped += self.defrag.dropped - before
            if done is None:
                return []
            counts.reassembled += 1
            r = decode_reassembled(key, *done)
            if r.__class__ is str:
                setattr(counts, r, getattr(counts, r) + 1)
                return []
            kind = r[0]
            if kind is UDP:
                counts.udp += 1
                _, src, dst, sport, dport, payload, cut = r
                return [Datagram(number, time, src, dst, sport, dport, UDP, payload, cut)]
        if kind is TCP:
            counts.tcp_segments += 1
            _, src, dst, sport, dport, payload, cut, seq, flags = r
            if cut:
                counts.truncated += 1
            deliveries = self.tcp.segment((src, sport, dst, dport), seq, flags, payload, cut, time)
            self._sync_tcp_counts()
            return self._deliver(deliveries, number, time) if deliveries else []
        return []

    @staticmethod
    def _deliver(deliveries, number, time):
        return [Datagram(number, time, key[0], key[2], key[1], key[3], TCP, payload, 0, stream, gap, end)
                for key, stream, payload, gap, end in deliveries]

    def _sync_tcp_counts(self):
        tcp, counts = self.tcp, self.counts
        counts.tcp_retransmitted = tcp.retransmitted
        counts.tcp_out_of_order = tcp.out_of_order
        counts.tcp_gaps = tcp.gaps
        counts.tcp_evicted = tcp.evicted


def read_transport(source: Source, transport: Optional[Transport] = None) -> Iterator[Datagram]:
    """Every UDP datagram and every run of new TCP stream bytes in a capture, in capture order.

    ``source`` is a path or a binary file object. Pass a ``Transport`` to read its
    ``counts`` afterwards (or to set limits). A damaged file raises ``CaptureError``
    after everything readable before the damage has been yielded."""
    tr = transport or Transport()
    counts = tr.counts
    other = tr._other
    new = tuple.__new__
    number, time, udp, truncated = 0, 0.0, 0, 0
    records = scan(source)
    try:
        try:
            # The hot loop: a plain UDP datagram goes straight from the record to a Datagram.
            for number, time, linktype, data, _orig in records:
                r = decode(linktype, data)
                if r[0] is UDP:
                    _, src, dst, sport, dport, payload, cut = r
                    udp += 1
                    if cut:
                        truncated += 1
                    yield new(Datagram, (number, time, src, dst, sport, dport, UDP, payload, cut, 0, 0, False))
                else:
                    yield from other(r, number, time)
        except CaptureError:
            # What was read before the damage is still delivered, then the error.
            yield from tr.flush(number, time)
            raise
        yield from tr.flush(number, time)
    finally:
        counts.frames += number
        counts.udp += udp
        counts.truncated += truncated
