"""Readers whose output is text: (frame, text) pairs instead of Records (each overrides
``Reader.output``, the reader's hook for what it hands out; the listing ``Reader.arrived`` too).

``RenderingReader`` renders each record as it is made (the parallel workers and the
single reader print the same pairs). ``ListingReader`` is the one-line listing's
fast path: the common packets of a decided flow - data packets, and control packets
of key 0 with no keys to apply - go straight from their bytes to their line, without
the Record that ``decode_packet`` fills and ``packet_line`` reads back (half the cost
of a control packet's line). Every other packet (malformed, TLVs, renegotiations,
tls-crypt-v2 client keys, anything the user's keys open) takes the record path.

Both paths read the packet with the same layout (``wirelayout``, derived from the
Scapy layers) and write the same line formats (``render.line``'s public pieces);
what is left here is the choice of what the fast path may take, and
tests/test_listing.py proves the two paths give the same line for every packet of
every bundled capture and of thousands of mangled ones.
"""


from ..protocol import CARRIES_WKC, CLIENT_RESETS, CONTROL_OPCODES, MAX_ACKS, OPCODES, PLAIN, RESETS, Opcode
from ..render.line import (ACK_LINE, CONTROL_ACKS_LINE, CONTROL_LINE, DATA_V2_LINE, OPAQUE_LINE, OPCODE_LINE,
                           direction_label, packet_line, short_id, wrapping_words)
from ..wirelayout import control_layout, data_header
from .reader import Reader

# Opcodes as plain ints (compared with every packet's) and the names lines show.
_DATA_V1, _DATA_V2, _ACK, _TLS = (int(o) for o in (Opcode.P_DATA_V1, Opcode.P_DATA_V2, Opcode.P_ACK_V1,
                                                   Opcode.P_CONTROL_V1))
_DATA_V1_NAME, _DATA_V2_NAME = OPCODES[_DATA_V1], OPCODES[_DATA_V2]


class RenderingReader(Reader):
    """A Reader whose records come out as ``(frame, render(record))``."""

    def __init__(self, options, render):
        super().__init__(options)
        self.render = render

    def output(self, flow, frame, time, sender, data, inference):
        return frame, self.render(self.record(flow, frame, time, sender, data, inference))


class ListingReader(Reader):
    """A Reader whose records come out as ``(frame, line)``, the line as
    ``packet_line`` makes it (in ``colour`` where asked)."""

    def __init__(self, options, colour: bool = False):
        if options.sessions:
            raise ValueError("ListingReader makes no records to count sessions from: use Reader")
        super().__init__(options)
        self.colour = colour
        # Control packets take the fast path only where the record path would do nothing
        # more than decode them: key 0, no keys to open them, no client key (WKc) to read.
        self._fast_control = CONTROL_OPCODES.difference(CARRIES_WKC) if self.no_keys else frozenset()
        # ...and, on arrival, not a client reset (it may start a session with another wrapping).
        self._fast_arrival = self._fast_control.difference(CLIENT_RESETS)
        self._layouts = {}  # Wrapping -> _wrapping_layout()
        # Every wrapping starts as the plain layout does: op, session id (its only field).
        self._session_id = control_layout(PLAIN).unpack_header
        self._min_control = control_layout(PLAIN).header
        self._data_v2_header = data_header(_DATA_V2)

    def arrived(self, flow, frame, time, sender, data):
        """Reader.arrived (a packet of an OpenVPN flow while nothing waits), with the
        common packets' lines made here, a call shorter; the rest go the usual way."""
        first = data[0]
        opcode = first >> 3
        if opcode == _DATA_V2 or opcode == _DATA_V1:
            line = self._data_line(flow, frame, time, sender, data, opcode)
            if line is not None:
                return frame, line
        elif opcode in self._fast_arrival and not first & 7 and len(data) >= self._min_control:
            inference = flow.inference
            if inference is not None and inference.decided is not None:
                session_id = self._session_id(data)[0]
                line = self._control_line(flow, frame, time, sender, data, opcode, session_id, inference.decided)
                if line is not None:
                    flow.session_ids[sender] = session_id
                    return frame, line
        return Reader.arrived(self, flow, frame, time, sender, data)

    def output(self, flow, frame, time, sender, data, inference):
        """The packet's line: made here from its bytes for the common packets, else from
        its Record (``Reader.record``)."""
        if data:
            first = data[0]
            opcode = first >> 3
            if opcode == _DATA_V2 or opcode == _DATA_V1:
                line = self._data_line(flow, frame, time, sender, data, opcode)
            elif opcode in self._fast_control and not first & 7 and len(data) >= self._min_control:
                inference = inference or flow.inference
                wrapping = inference.decided if inference is not None and inference.decided is not None else PLAIN
                line = self._control_line(flow, frame, time, sender, data, opcode, self._session_id(data)[0], wrapping)
            else:
                line = None
            if line is not None:
                return frame, line
        return frame, packet_line(self.record(flow, frame, time, sender, data, inference), self.colour,
                                  self._label(flow, sender))

    def _label(self, flow, sender):
        """The flow's direction as lines show it, made once per flow (and again if its
        roles were found reversed: Flow.ends is then new)."""
        cached = flow.rendered
        if cached is None or cached[0] is not flow.ends:
            cached = flow.rendered = (flow.ends, {side: direction_label(*ends) for side, ends in flow.ends.items()})
        return cached[1][sender]

    def _data_line(self, flow, frame, time, sender, data, opcode):
        cached = flow.rendered  # (self._label, inlined: this runs for most packets)
        label = cached[1][sender] if cached is not None and cached[0] is flow.ends else self._label(flow, sender)
        if opcode == _DATA_V1:
            return OPCODE_LINE % (frame, time - self.first_time, label, _DATA_V1_NAME, data[0] & 7, len(data))
        header = self._data_v2_header
        if len(data) < header:
            return None  # malformed
        return DATA_V2_LINE % (frame, time - self.first_time, label, _DATA_V2_NAME, data[0] & 7,
                               int.from_bytes(data[1:header], "big"), len(data))

    def _control_line(self, flow, frame, time, sender, data, opcode, session_id, wrapping):
        """A key-0 control packet's line (as decode then packet_line), or None for the
        record path: a malformed packet, a reset with TLVs."""
        visible, header, words, after_acks = self._layouts.get(wrapping) or self._wrapping_layout(wrapping)
        size = len(data)
        if size <= header:
            return None
        sid = short_id(session_id)
        cached = flow.rendered  # (self._label, inlined: this runs for most packets)
        label = cached[1][sender] if cached is not None and cached[0] is flow.ends else self._label(flow, sender)
        count = 0
        if visible:
            count = data[header]
            if count > MAX_ACKS:
                return None
            size_after, unpack, remote_at, message_at, _names, _struct = after_acks[opcode][count]
            position = header + 1 + size_after
            if position > size or (position < size and (opcode == _ACK or opcode in RESETS)):
                return None  # truncated, bytes after a P_ACK_V1, a reset's TLVs
        if not visible or (opcode == _ACK and not count):  # tls-crypt without its key; an empty ACK
            return OPAQUE_LINE % (frame, time - self.first_time, label, OPCODES[opcode], 0, sid,
                              None, size) + words
        values = unpack(data, header + 1)
        mpid = values[message_at] if message_at is not None else None
        if count:
            if count > 1:  # (an ACK array repeats from packet to packet: joined once)
                acks = values[:count]
                acks = _ACK_TEXTS.get(acks) or _ack_text(acks)
            else:
                acks = values[0]
            line = ACK_LINE if mpid is None else CONTROL_ACKS_LINE
            line %= (frame, time - self.first_time, label, OPCODES[opcode], 0, sid, acks,
                     short_id(values[remote_at]), mpid, size)
        else:
            line = CONTROL_LINE % (frame, time - self.first_time, label, OPCODES[opcode], 0, sid,
                               mpid, size)
        if opcode == _TLS and position < size:  # (Reader._tls for this packet: what it completes)
            key = (sender, 0, session_id)
            stream = flow.tls.get(key) or self.tls_stream(flow, key)
            names = stream.add(mpid, data[position:], frame)
            if names:
                return line + words + " [" + ", ".join(names) + "]"
        return line + words

    def _wrapping_layout(self, wrapping):
        """(control fields visible, header size, the words the line ends with, the structs
        after the ACK count) of a wrapping: worked out once per reader and wrapping."""
        layout = control_layout(wrapping)
        kind = layout.kind
        words = ""
        if kind != "none":
            words = wrapping_words(kind, layout.hmac_size if kind == "tls-auth" else None, colour=self.colour)
        entry = self._layouts[wrapping] = (layout.visible, layout.header, words, layout.after_acks)
        return entry


_ACK_TEXTS = {}  # ACK packet-ids -> "3,2,1,0" as lines show them
_ACK_TEXTS_MAX = 1 << 14


def _ack_text(acks):
    if len(_ACK_TEXTS) >= _ACK_TEXTS_MAX:
        _ACK_TEXTS.clear()
    text = _ACK_TEXTS[acks] = ",".join(map(str, acks))
    return text
