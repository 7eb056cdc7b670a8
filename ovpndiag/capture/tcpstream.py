"""TCP stream reassembly: segments -> the in-order bytes of each connection direction.

``StreamReassembler.segment()`` takes one captured segment and returns what it
makes readable - new in-order bytes, never the same byte twice - as deliveries

    (key, stream, payload, gap, end)

``key`` is the direction ``(src, sport, dst, dport)``; ``stream`` a number given to
each connection direction (a new connection on the same ports gets a new one);
``gap`` counts bytes of this stream that were never captured before ``payload``
(lost, or cut by the snap length), so a reader of framed data must resynchronise;
``end`` marks the last delivery of a stream (FIN reached, RST, evicted, or
``flush()``), after which its state is gone (``payload`` may then be empty).

Sequence numbers are turned into unbounded stream positions by their signed
32-bit distance from the next expected byte, so wraparound needs no special case.
A stream whose SYN was not captured starts at the first segment with data.
Segments ahead of a gap wait (bounded) for the retransmission that fills it.
Memory is bounded: pending bytes per stream and in total, the number of streams,
an idle timeout in capture time, and a bounded memory of closed streams (so that
late retransmissions after a FIN do not start a phantom stream).

With ``events`` set, ``out`` also holds notes ``(key, kind, syns)`` (3 items, told
apart from deliveries by their length) about the connection, from segments off the
in-order common case only: ``FIN_SENT`` / ``RST_SENT`` on the direction that sent it
(the first FIN of a stream; every RST), ``REFUSED`` on a client's direction whose
SYN got a RST and no SYN-ACK, ``UNANSWERED`` on one whose SYN got no answer at all
before it ended (idle, evicted, ``flush()``); ``syns``: SYNs it sent. ``SYN_SENT``
(a new attempt) and ``ANSWERED`` frame each attempt: every SYN_SENT is followed,
for its key, by exactly one of ANSWERED, REFUSED or UNANSWERED.
"""

import heapq
from collections import OrderedDict

MASK = 0xFFFFFFFF
HALF = 0x80000000
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
# Notes (events): what a TCP signal says (also capture.datagrams.TransportEvent.kind).
FIN_SENT, RST_SENT, REFUSED, UNANSWERED = "fin", "rst", "refused", "unanswered"
SYN_SENT, ANSWERED = "syn", "answered"  # (no event of their own: they frame an attempt)
SYN_COPY = 0.1  # seconds: a SYN again sooner is the capture's copy (mirror port, -i any), not a retry (1 s+)


class _Stream:
    __slots__ = ("id", "pos", "isn", "heap", "pending", "gap", "fin", "last_seen", "syns")

    def __init__(self, ident, pos, isn, now):
        self.id = ident
        self.pos = pos              # stream position (unbounded) of the next byte expected
        self.isn = isn              # sequence number of the SYN, None if not captured
        self.heap = []              # out-of-order segments: (position, arrival, data, cut)
        self.pending = 0            # bytes in heap
        self.gap = 0                # bytes known missing before the next delivery
        self.fin = None             # stream position of the FIN, once seen
        self.last_seen = now
        self.syns = 0               # (events) SYNs this side sent not answered yet


class StreamReassembler:
    """Per-direction TCP reassembly; see the module docstring."""

    # A stream costs about 400 bytes, a closed one remembered about 250: the defaults
    # keep that under 10 MB. Closed streams are remembered 2 minutes (twice the MSL
    # Linux assumes), long enough for every late retransmission.
    def __init__(self, max_streams: int = 16384, max_pending: int = 1 << 20,
                 max_pending_total: int = 32 << 20, idle_timeout: float = 600.0,
                 max_closed: int = 16384, closed_timeout: float = 120.0):
        self.max_streams = max_streams
        self.max_pending = max_pending
        self.max_pending_total = max_pending_total
        self.idle_timeout = idle_timeout
        self.max_closed = max_closed
        self.closed_timeout = closed_timeout
        self._streams = OrderedDict()       # key -> _Stream, least recently active first
        self._closed = OrderedDict()        # key -> (sequence number where it ended, when), oldest first
        self._ids = 0
        self._arrivals = 0
        self._pending_total = 0
        self._now = float("-inf")
        self._oldest_seen = float("-inf")  # the oldest stream's last_seen is at least this
        # Counters for a summary.
        self.retransmitted = 0      # segments whose bytes had all been delivered already
        self.out_of_order = 0       # segments that arrived ahead of a gap and were held
        self.gaps = 0               # holes skipped (bytes never captured)
        self.evicted = 0            # streams ended for being idle or over the stream limit
        self.events = False         # add notes to the deliveries (see the module docstring)

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def pending_bytes(self) -> int:
        return self._pending_total

    # ------------------------------------------------------------------ one segment

    def segment(self, key, seq, flags, payload, cut, now):
        """Feed one segment (``cut``: bytes of it the capture lacks); returns deliveries."""
        if now > self._now:
            self._now = now
        streams = self._streams
        st = streams.get(key)
        length = len(payload) + cut
        # The common case, kept short: the next bytes of a known stream, nothing pending.
        if (st is not None and not flags & 7 and not cut and not st.heap and not st.gap
                and st.fin is None and seq == st.pos & MASK):
            st.last_seen = self._now
            streams.move_to_end(key)
            if not payload:
                return []
            st.pos += length
            out = [(key, st.id, payload, 0, False)]
            if self._oldest_seen + self.idle_timeout < self._now:
                # (the oldest stream's last_seen never goes down: a stale bound only looks early)
                oldest = next(iter(streams.values())).last_seen
                if oldest + self.idle_timeout < self._now:
                    self._expire(out)
                else:
                    self._oldest_seen = oldest
            return out

        out = []
        self._expire(out)                                   # idle streams end before new events
        st = streams.get(key)
        if flags & RST:
            if self.events:
                self._reset_note(key, out)
            # A reset ends the connection in both directions.
            for k in (key, (key[2], key[3], key[0], key[1])):
                s = streams.pop(k, None)
                if s is not None:
                    self._finish(k, s, out)
            return out
        if flags & SYN:
            start = (seq + 1) & MASK
            if st is not None and st.isn != seq:
                self._finish(key, streams.pop(key), out)    # the same ports, a new connection
                st = None
            if st is None:
                st = self._open(key, start, seq, out)
                if self.events and not flags & ACK:  # a client's connection attempt
                    st.syns = 1
                    out.append((key, SYN_SENT, 1))
            elif st.syns and self._now - st.last_seen >= SYN_COPY:
                st.syns += 1                                # its SYN again: still no answer
            seq = start                                     # data on a SYN follows it
        elif st is None:
            if not length:
                return out                                  # ACKs and FINs of nothing we know
            closed = self._closed.get(key)
            if closed is not None:
                behind = (seq - closed[0]) & MASK
                if behind >= HALF and behind - (1 << 32) + length <= 0:
                    self.retransmitted += 1                 # late copy of a closed stream's bytes
                    return out
            st = self._open(key, seq, None, out)
        st.last_seen = self._now
        streams.move_to_end(key)

        delta = (seq - st.pos) & MASK
        if delta >= HALF:
            delta -= 1 << 32
        start = st.pos + delta
        if flags & FIN and st.fin is None:
            st.fin = start + length
            if self.events:
                out.append((key, FIN_SENT, 0))
        if length:
            if delta > 0:
                # Ahead of a gap: hold it until the gap is filled (or given up on).
                self._arrivals += 1
                heapq.heappush(st.heap, (start, self._arrivals, payload, cut))
                st.pending += len(payload)
                self._pending_total += len(payload)
                self.out_of_order += 1
                if st.pending > self.max_pending:
                    self._skip_gap(key, st, out)
                if self._pending_total > self.max_pending_total:
                    self._shed(key, st, out)
            elif delta + length <= 0:
                self.retransmitted += 1
            else:
                self._take(key, st, start, payload, cut, out)
                if st.heap:
                    self._drain(key, st, out)
        if st.fin is not None and st.pos >= st.fin and not st.heap:
            del streams[key]
            self._finish(key, st, out)
        return out

    # ------------------------------------------------------------------ helpers

    def _open(self, key, pos, isn, out):
        while len(self._streams) >= self.max_streams:
            old_key, old = self._streams.popitem(last=False)
            self.evicted += 1
            self._finish(old_key, old, out)
        self._closed.pop(key, None)
        if self.events:  # the other side's first segment answers its connection attempt
            reverse = (key[2], key[3], key[0], key[1])
            attempt = self._streams.get(reverse)
            if attempt is not None and attempt.syns:
                attempt.syns = 0
                out.append((reverse, ANSWERED, 0))
        self._ids += 1
        st = self._streams[key] = _Stream(self._ids, pos, isn, self._now)
        return st

    def _take(self, key, st, start, payload, cut, out):
        """Deliver the part of a segment at or after ``st.pos`` (it starts at or before it)."""
        skip = st.pos - start
        data = payload[skip:] if skip else payload
        st.pos = start + len(payload) + cut
        if data:
            # Merge with a delivery made for this stream earlier in the same call.
            if out and out[-1][1] == st.id and not st.gap and not out[-1][4]:
                prev = out[-1]
                out[-1] = (key, st.id, prev[2] + data, prev[3], False)
            else:
                out.append((key, st.id, data, st.gap, False))
                st.gap = 0
        if cut:
            st.gap += min(cut, st.pos - max(start + len(payload), start + skip))

    def _drain(self, key, st, out):
        heap = st.heap
        while heap and heap[0][0] <= st.pos:
            start, _n, payload, cut = heapq.heappop(heap)
            st.pending -= len(payload)
            self._pending_total -= len(payload)
            if start + len(payload) + cut > st.pos:
                self._take(key, st, start, payload, cut, out)
            else:
                self.retransmitted += 1

    def _skip_gap(self, key, st, out):
        """Give up waiting for the bytes before the earliest held segment."""
        start = st.heap[0][0]
        if start > st.pos:
            st.gap += start - st.pos
            st.pos = start
            self.gaps += 1
        self._drain(key, st, out)

    def _shed(self, key, st, out):
        """Over the total pending limit: give up gaps, this stream first, then the oldest."""
        if st.heap:
            self._skip_gap(key, st, out)
        for k, s in list(self._streams.items()):
            if self._pending_total <= self.max_pending_total:
                break
            while s.heap:
                self._skip_gap(k, s, out)

    def _finish(self, key, st, out):
        """End a stream (already removed from the table): deliver what it holds, then end."""
        while st.heap:
            self._skip_gap(key, st, out)
        if st.fin is not None and st.fin > st.pos:  # (bytes sent before the FIN that the capture never had)
            st.gap += st.fin - st.pos
        if out and out[-1][1] == st.id and not st.gap:
            last = out[-1]
            out[-1] = (last[0], last[1], last[2], last[3], True)
        else:
            out.append((key, st.id, b"", st.gap, True))
        if st.syns:
            out.append((key, UNANSWERED, st.syns))
        closed = self._closed
        closed[key] = (st.pos & MASK, self._now)
        closed.move_to_end(key)
        horizon = self._now - self.closed_timeout
        while closed and (len(closed) > self.max_closed or next(iter(closed.values()))[1] < horizon):
            closed.popitem(last=False)

    def _reset_note(self, key, out):
        """(events) A RST sent on ``key``: a refusal if it answers the other side's SYN."""
        reverse = (key[2], key[3], key[0], key[1])
        attempt = self._streams.get(reverse)
        if attempt is not None and attempt.syns and key not in self._streams:
            out.append((reverse, REFUSED, attempt.syns))
            attempt.syns = 0
        else:
            out.append((key, RST_SENT, 0))

    def _expire(self, out):
        streams = self._streams
        horizon = self._now - self.idle_timeout
        while streams:
            key, st = next(iter(streams.items()))
            if st.last_seen >= horizon:
                break
            del streams[key]
            self.evicted += 1
            self._finish(key, st, out)

    def flush(self):
        """End every stream (at the end of a capture): held bytes after their gaps, then ends."""
        out = []
        while self._streams:
            key, st = self._streams.popitem(last=False)
            self._finish(key, st, out)
        return out
