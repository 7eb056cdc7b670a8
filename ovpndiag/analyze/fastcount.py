"""analyze's fast path: the common packets counted in their sessions straight from
their bytes, without the Record that ``decode_packet`` fills and ``SessionTrace.count``
reads back (the Record and the decoding were a third of a worker's time).

``install(reader)`` takes over the reader's ``output`` while ``run.analyses`` reads a
capture (it hands out nothing but how many packets: no one reads the Records). It
takes, as the listing's fast path does (``dissect.listing``), data packets and control
packets of key 0 with no keys to apply and no client key (WKc) to read, and reads them
with the same layout (``wirelayout``); it gives ``SessionTrace`` exactly the facts the record
path gives it (``Reader.record`` -> ``_tls`` -> ``_count``): the session found by
``Reader.session_of``, the TLS names by the flow's TLS stream. Everything else
(malformed, truncated, renegotiations, anything a key opens) takes the record path.
tests/test_fastcount.py compares both paths on every packet of every bundled capture.
"""

from ..protocol import CARRIES_WKC, CONTROL_OPCODES, MAX_ACKS, PLAIN, Opcode
from ..wirelayout import control_layout, data_header

_DATA_V1, _DATA_V2, _TLS = (int(o) for o in (Opcode.P_DATA_V1, Opcode.P_DATA_V2, Opcode.P_CONTROL_V1))


def install(reader):
    """Set ``reader``'s (a Reader with analyze's sessions) ``output``: common packets
    counted here, the rest by ``Reader.output``, handing out the packet's frame (or Record)."""
    slow = reader.output  # (the class's: the Record path)
    fast_control = frozenset() if not reader.no_keys or reader.options.tls_details else \
        CONTROL_OPCODES.difference(CARRIES_WKC)
    data_v2_header = data_header(_DATA_V2)
    session_of = reader.session_of
    layouts = {}  # Wrapping -> (visible, header, after_acks)

    def output(flow, frame, time, sender, data, inference):
        if data:
            first = data[0]
            opcode = first >> 3
            if opcode == _DATA_V2 or opcode == _DATA_V1:
                size = len(data)
                if opcode == _DATA_V1:
                    peer_id = None
                elif size >= data_v2_header:
                    peer_id = int.from_bytes(data[1:data_v2_header], "big")
                else:
                    return slow(flow, frame, time, sender, data, inference)  # (malformed)
                session_of(flow, sender, None, None, peer_id).data_packet(frame, time, sender)
                return frame
            if opcode in fast_control and not first & 7:
                if inference is None:
                    inference = flow.inference
                wrapping = inference.decided if inference and inference.decided else PLAIN
                visible, header, after_acks = layouts.get(wrapping) or _layout(layouts, wrapping)
                size = len(data)
                if visible:
                    if size > header:
                        count = data[header]
                        if count <= MAX_ACKS:
                            size_after, unpack, remote_at, message_at, _names, _struct = after_acks[opcode][count]
                            position = header + 1 + size_after
                            if position <= size:
                                values = unpack(data, header + 1)
                                session_id = int.from_bytes(data[1:9], "big")
                                acks = values[:count]
                                remote = values[remote_at] if count else None
                                packet_id = values[message_at] if message_at is not None else None
                                names = None
                                if opcode == _TLS and position < size:  # (as Reader._tls)
                                    key = (sender, 0, session_id)
                                    stream = flow.tls.get(key) or reader.tls_stream(flow, key)
                                    names = stream.add(packet_id, data[position:], frame) or None
                                session_of(flow, sender, session_id, session_id if sender == "client" else remote,
                                           None).control_packet(frame, time, sender, opcode, 0, packet_id,
                                                                acks, names, None, data, None, position,
                                                                size - position)
                                return frame
                elif size >= header:  # (tls-crypt without its key: the session id only)
                    session_id = int.from_bytes(data[1:9], "big")
                    session_of(flow, sender, session_id, session_id if sender == "client" else None,
                               None).control_packet(frame, time, sender, opcode, 0, None, None, None, None, data,
                                                    None, None, None)
                    return frame
        return slow(flow, frame, time, sender, data, inference)

    reader.output = output


def _layout(layouts, wrapping):
    layout = control_layout(wrapping)
    entry = layouts[wrapping] = (layout.visible, layout.header, layout.after_acks)
    return entry
