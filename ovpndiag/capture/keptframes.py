"""``read_transport`` that also keeps the recent frames themselves, for ``dissect -V``.

A field tree shows each packet's frame (its length on the wire and captured, its
link type) and the link, IP and UDP/TCP headers it came in; the records the
dissector makes carry only the frame's number. ``KeptFrames`` remembers the last
``limit`` frames by number, as ``(linktype, data, orig_len)``; ``read_transport``
here delivers the same datagrams as ``datagrams.read_transport`` (it takes the
general per-frame path, which tests/test_capture_read.py proves equal to the fast
one) while filling it. A record whose frame was forgotten (one that waited behind
more than ``limit`` frames) is shown without its headers.
"""

from collections import OrderedDict
from typing import Iterator, Optional, Tuple

from .pcapfile import CaptureError, Source, scan
from .datagrams import Datagram, Transport

DEFAULT_LIMIT = 1 << 15  # frames: more than any reader queue holds back in practice


class KeptFrames:
    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._frames: "OrderedDict[int, Tuple[int, bytes, int]]" = OrderedDict()

    def keep(self, number: int, linktype: int, data: bytes, orig_len: int) -> None:
        frames = self._frames
        frames[number] = (linktype, data, orig_len)
        if len(frames) > self.limit:
            frames.popitem(last=False)

    def clear(self) -> None:
        self._frames.clear()

    def get(self, number: int) -> Optional[Tuple[int, bytes, int]]:
        """(linktype, captured bytes, length on the wire) of a frame, or None if forgotten."""
        return self._frames.get(number)


def read_transport(source: Source, frames: KeptFrames, transport: Optional[Transport] = None
                   ) -> Iterator[Datagram]:
    """``datagrams.read_transport``, keeping every frame read in ``frames``. On a damaged
    file what was read before the damage (and the TCP bytes still held) is delivered,
    then the ``CaptureError``."""
    tr = transport or Transport()
    frames.clear()  # (a new file numbers its frames from 1 again)
    number, time = 0, 0.0
    feed, keep = tr.feed, frames.keep
    try:
        for number, time, linktype, data, orig_len in scan(source):
            keep(number, linktype, data, orig_len)
            yield from feed(number, time, linktype, data)
    except CaptureError:
        yield from tr.flush(number, time)
        raise
    yield from tr.flush(number, time)
