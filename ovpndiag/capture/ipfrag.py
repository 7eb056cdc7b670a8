"""IP fragment reassembly (IPv4 and IPv6), in bounded memory.

A certificate flight over UDP is often bigger than the path MTU, so a capture may
hold the datagram only as fragments. ``Defragmenter.add()`` takes one fragment
and returns the reassembled IP payload in the call that completes it, as the
receiving host would. Fragments are keyed by addresses + identification (+
protocol for IPv4), as RFC 791 / RFC 8200 define a datagram.

Overlaps follow what Linux does since 2018 (and RFC 5722 requires for IPv6): a
fragment that only repeats bytes already received (a duplicate) is harmless; one
that overlaps with *different* bytes makes the whole datagram suspect, and it is
dropped. Memory is bounded by the number of datagrams and bytes pending and by a
timeout in capture time; the oldest datagrams go first.
"""

from typing import Dict, List, Optional, Tuple


class _Pending:
    __slots__ = ("first_seen", "pieces", "end", "received", "protocol")

    def __init__(self, now):
        self.first_seen = now
        self.pieces: List[Tuple[int, bytes]] = []
        self.end: Optional[int] = None      # payload length, known once the last fragment is in
        self.received = 0                   # bytes received, duplicates included
        self.protocol: Optional[int] = None  # from the fragment at offset 0


class Defragmenter:
    """Reassembles fragments fed in capture order; see ``add``."""

    # Linux keeps fragments 30 s (IPv4) / 60 s (IPv6); an IP payload is at most 65535 bytes.
    def __init__(self, max_datagrams: int = 1024, max_bytes: int = 8 << 20, timeout: float = 60.0,
                 max_pieces: int = 1024):
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_pieces = max_pieces
        self._pending: Dict[tuple, _Pending] = {}     # insertion order = age
        self._bytes = 0
        self._now = float("-inf")
        # What happened to fragments that did not (yet) make a datagram.
        self.reassembled = 0
        self.dropped = 0            # datagrams given up: timeout, limits, conflicting or bad fragments

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def add(self, key, offset: int, more: bool, protocol: int, piece: bytes,
            now: float) -> Optional[Tuple[int, bytes]]:
        """Add one fragment; return ``(protocol, payload)`` when it completes its datagram.

        ``offset`` is in bytes, ``more`` the MF/M flag, ``now`` the capture time."""
        if now > self._now:
            self._now = now
        self._expire()
        entry = self._pending.get(key)
        if entry is None:
            if not piece and more:
                return None
            entry = self._pending[key] = _Pending(self._now)
        stop = offset + len(piece)
        if stop > 65535 or len(entry.pieces) >= self.max_pieces:
            self._drop(key)
            return None
        if not more:
            if entry.end is not None and entry.end != stop:
                self._drop(key)                 # two different "last" fragments
                return None
            entry.end = stop
        if offset == 0:
            entry.protocol = protocol
        entry.pieces.append((offset, piece))
        entry.received += len(piece)
        self._bytes += len(piece)
        if entry.end is not None and entry.received >= entry.end and entry.protocol is not None:
            payload = self._assemble(entry)
            if payload is not None:
                self._forget(key)
                if payload is _CONFLICT:
                    self.dropped += 1
                    return None
                self.reassembled += 1
                return entry.protocol, payload
        self._limit()
        return None

    @staticmethod
    def _assemble(entry):
        """The payload if the pieces cover it, None if a hole is left, _CONFLICT if
        pieces disagree about some byte or reach past the end."""
        end = entry.end
        out = bytearray(end)
        covered = 0
        for offset, piece in sorted(entry.pieces, key=lambda p: p[0]):
            if offset > covered:
                return None                     # a hole: wait for the missing fragment
            stop = offset + len(piece)
            if stop > end:
                return _CONFLICT
            overlap = min(covered, stop) - offset
            if overlap > 0 and out[offset:offset + overlap] != piece[:overlap]:
                return _CONFLICT
            if stop > covered:
                out[covered:stop] = piece[covered - offset:]
                covered = stop
        return bytes(out) if covered >= end else None

    def _forget(self, key):
        entry = self._pending.pop(key)
        self._bytes -= sum(len(p) for _o, p in entry.pieces)

    def _drop(self, key):
        self._forget(key)
        self.dropped += 1

    def _expire(self):
        pending = self._pending
        while pending:
            key = next(iter(pending))
            if pending[key].first_seen + self.timeout >= self._now:
                break
            self._drop(key)

    def _limit(self):
        pending = self._pending
        while pending and (len(pending) > self.max_datagrams or self._bytes > self.max_bytes):
            self._drop(next(iter(pending)))


_CONFLICT = object()     # "pieces disagree": distinct from every payload and from None
