"""A session's timeline: what each side did, in frame order, for people and JSON.

Each entry is ``[frame, seconds since the session's first packet, sender, text]``
(a list: a finished session keeps its timeline packed, see dissect.sessions). Only
landmarks are listed - resets, hellos, each side's TLS flight ("(to N)": the frame it
ends in), alerts, the first encrypted messages after the handshake, the first data each
way, renegotiations, transport events, each side's last packet - with retransmissions,
unacknowledged packets and round-trip times folded into them. Texts are short: a busy
capture has many thousands of timelines.
"""

from operator import itemgetter

from ..protocol import OPCODES

_FRAME = itemgetter(0)
_SIDES_OWN = ("fin", "rst", "refused", "unanswered", "unanswered-once")  # transport events shown on their side


class Timeline:
    def __init__(self, trace, marks, facts, inner, unacknowledged):
        """``unacknowledged``: per side (CLIENT, SERVER), how many of its packets were never acknowledged."""
        self.start = trace.first
        self.times = marks.times  # (of the landmarks' frames)
        self.entries = []
        self.rtt = None
        self._build(trace, marks, facts, inner, unacknowledged)
        self.entries.sort(key=_FRAME)

    def add(self, frame, sender, text, time=None):
        time = self.times.get(frame) if time is None else time
        offset = None if time is None or self.start is None else round(time - self.start, 6)
        self.entries.append([frame, offset, sender, text])

    def _build(self, trace, marks, facts, inner, unacknowledged):
        resets = marks.client_resets
        if resets:
            text = f"reset ({OPCODES.get(marks.reset_opcode, 'reset')})"
            if len(resets) > 1:
                text += f", sent {len(resets)} times"
            self.add(resets[0], "client", text)
        if marks.server_resets:
            frame = marks.server_resets[0]
            text = "reset"
            if resets and frame in self.times and resets[0] in self.times:
                self.rtt = round(self.times[frame] - self.times[resets[0]], 6)
                text += f" (rtt {self.rtt * 1000:.3f} ms)"
            if len(marks.server_resets) > 1:
                text += f", sent {len(marks.server_resets)} times"
            self.add(frame, "server", text)
        if marks.client_hello is not None:
            self.add(marks.client_hello, "client", "Client Hello")
        if marks.server_flight:
            first, last = marks.server_flight[0], marks.server_flight[-1]
            text = flight_names(marks.server_names)
            if facts.version:
                text += f" ({facts.version}, {facts.cipher_suite})"
            if last != first:
                text += f" (to {last})"
            if self.rtt is None and marks.client_hello in self.times and first in self.times:
                self.rtt = round(self.times[first] - self.times[marks.client_hello], 6)
            self.add(first, "server", text)
        if marks.client_flight:
            first, last = marks.client_flight[0], marks.client_flight[-1]
            self.add(first, "client", flight_names(marks.client_names)
                     + (f" (to {last})" if last != first else ""))
        if marks.server_after is not None:
            self.add(marks.server_after, "server", "TLS handshake complete" + (" (Finished)" if not marks.tls13 else ""))
        if marks.client_app:
            self.add(marks.client_app[0], "client", f"encrypted messages ({len(marks.client_app)} packets)")
        if marks.server_app[1:]:
            self.add(marks.server_app[1], "server", f"encrypted messages ({len(marks.server_app) - 1} packets)")
        for frame, sender, name in marks.alerts:
            self.add(frame, sender, f"TLS {name}")
        for event in inner:
            self.add(event.frame, event.sender, f"not decrypted: {event.text}" if event.kind == "undecryptable"
                     else f"{event.kind} (decrypted): {event.text}")
        data = trace.data
        if data is not None:
            if data[2]:
                self.add(data[0], "client", f"data ({data[2]} packets)", data[1])
            if data[5]:
                self.add(data[3], "server", f"data ({data[5]} packets)", data[4])
        for key_id, (frame, sender) in sorted(marks.renegotiations.items()):
            self.add(frame, sender, f"renegotiation: key id {key_id}")
        for frame, time, kind, text, side in trace.events or ():
            self.add(frame, side if kind in _SIDES_OWN else "network", text, time)
        for index, side in enumerate(("client", "server")):
            unacked = unacknowledged[index]
            if marks.resent[index] or unacked:
                last = marks.last[index]
                notes = []
                if marks.resent[index]:
                    notes.append(f"{marks.resent[index]} resent")
                if unacked:
                    notes.append(f"{unacked} never acknowledged")
                self.add(last[0], side, "last control packet: " + ", ".join(notes), last[1])


def flight_names(names) -> str:
    """TLS names in order, repeats counted: 'Server Hello, Application Data x3' (the same
    few flights come back session after session: each is worked out once)."""
    key = tuple(names)
    text = _FLIGHTS.get(key)
    if text is None:
        shown, count = [], {}
        for name in names:
            if name in count:
                count[name] += 1
            else:
                count[name] = 1
                shown.append(name)
        text = ", ".join(f"{name} x{count[name]}" if count[name] > 1 else name for name in shown)
        if len(_FLIGHTS) < 4096:
            _FLIGHTS[key] = text
    return text


_FLIGHTS = {}
