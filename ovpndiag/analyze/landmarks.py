"""The landmarks of a session's control packets, kept as they come: ``Landmarks``.

``Landmarks.add`` takes each control packet's few facts (frame, time, sender, opcode,
key id, message packet-id, ACKs, the TLS names it completed, whether its HMAC verified)
and keeps only what a verdict reads: the resets, the ClientHello, each side's TLS
flight and the packets after it, alerts, renegotiations, and for the handshake's key
the packet-ids each side sent, had acknowledged and sent again. A few hundred bytes a
session, whatever its length.
"""

from ..protocol import CLIENT_RESETS, SERVER_RESETS

CLIENT, SERVER = 0, 1  # a side's index in Landmarks' per-side lists
SIDES = ("client", "server")
MAX_TRACKED = 4096  # packet-ids followed per side (a session past its handshake needs no more)
DUPLICATE = 0.01  # seconds: a packet seen again sooner is the capture's copy (OpenVPN resends after 0.2 s or more)
SOFT_RESET = 3  # P_CONTROL_SOFT_RESET_V1: a renegotiation


class Landmarks:
    """The landmarks of a session's control packets, kept as they are read (``add``, one
    call per packet): frames (None when not seen); per side lists are indexed CLIENT/SERVER."""

    __slots__ = ("client_resets", "server_resets", "reset_opcode", "client_hello", "server_hello",
                 "server_flight", "client_flight", "server_names", "client_names", "server_after", "client_app",
                 "server_app", "alerts", "renegotiations", "sent", "acked", "resent", "first", "last", "packets",
                 "times", "hmac_failed", "last_resent", "tls13")

    def __init__(self):
        self.client_resets, self.server_resets = [], []
        self.reset_opcode = None  # the client's first reset's opcode
        self.client_hello = self.server_hello = None
        self.server_flight = []  # frames of the server's first flight (from its Server Hello)
        self.client_flight = []  # frames of the client's flight after it
        self.server_names, self.client_names = [], []  # the TLS names of those flights
        self.server_after = None  # first server TLS packet after the client's flight (TLS 1.2: its Finished)
        self.client_app = []  # frames of client TLS packets after its flight (key-method 2, control messages)
        self.server_app = []  # frames of server TLS packets after the client's flight
        self.alerts = []  # (frame, sender, name)
        self.renegotiations = {}  # key id -> (frame, sender)
        # of the first key (id 0: the handshake), per side:
        self.sent = ({}, {})  # message packet-id -> the frame that first carried it
        self.acked = (set(), set())  # message packet-ids of its packets the other side acknowledged
        self.resent = [0, 0]  # (key id 0)
        self.first = [None, None]  # per side: (frame, time) of its first and last packet
        self.last = [None, None]
        self.packets = [0, 0]  # control packets
        self.times = {}  # frame -> time, of the frames landmarks name
        self.hmac_failed = 0
        self.last_resent = False  # the session's last packet was a retransmission: its sender got no answer
        self.tls13 = None  # True / False once the handshake shows it

    def add(self, frame, time, sender, opcode, key_id, packet_id, acks, tls, hmac_valid):
        side = CLIENT if sender == "client" else SERVER
        previous = self.last[side]
        if key_id:  # a renegotiation: that each side is there, and when and by whom it began
            self.packets[side] += 1
            if previous is None:
                self.first[side] = (frame, time)
            self.last[side] = (frame, time)
            if key_id not in self.renegotiations and (opcode == SOFT_RESET or tls):
                self.renegotiations[key_id] = (frame, sender)
                self.times[frame] = time
            return
        sent = self.sent[side]
        if packet_id is not None and previous is not None and time - previous[1] < DUPLICATE \
                and sent.get(packet_id) == previous[0]:
            return  # (its previous packet again at once: the capture saw it twice - a mirror port, -i any)
        self.packets[side] += 1
        if previous is None:
            self.first[side] = (frame, time)
        self.last[side] = (frame, time)
        if hmac_valid is False:
            self.hmac_failed += 1
        if acks:
            self.acked[1 - side].update(acks)
        if packet_id is not None:
            if packet_id in sent:
                self.resent[side] += 1
                self.last_resent = True
            else:
                self.last_resent = False
                if len(sent) < MAX_TRACKED:
                    sent[packet_id] = frame
        else:
            self.last_resent = False
        if opcode in CLIENT_RESETS:
            if not self.client_resets:
                self.reset_opcode = opcode
                self.times[frame] = time
            self.client_resets.append(frame)
        elif opcode in SERVER_RESETS:
            if not self.server_resets:
                self.times[frame] = time
            self.server_resets.append(frame)
        if tls:
            _tls(self, frame, sender, tls, time)


def _tls(marks, frame, sender, names, time):
    for name in names:
        if name.startswith("Alert"):
            marks.alerts.append((frame, sender, name))
            marks.times[frame] = time
    if sender == "client":
        if "Client Hello" in names and marks.client_hello is None:
            marks.client_hello = frame
            marks.times[frame] = time
        elif marks.server_hello is not None:
            if not marks.client_flight or (marks.server_after is None and not marks.client_app
                                           and _flight_continues(names)):
                if not marks.client_flight:
                    marks.times[frame] = time
                marks.client_flight.append(frame)
                marks.client_names += names
            else:
                if len(marks.client_app) < 2:
                    marks.times[frame] = time
                marks.client_app.append(frame)
        return
    if "Server Hello" in names and marks.server_hello is None:
        marks.server_hello = frame
        marks.tls13 = None
    if marks.server_hello is None:
        return
    if not marks.client_flight:
        if not marks.server_flight:
            marks.times[frame] = time
        marks.server_flight.append(frame)
        marks.server_names += names
        if marks.tls13 is None:
            marks.tls13 = "Certificate" not in marks.server_names and "Application Data" in marks.server_names
    else:
        if marks.server_after is None:
            marks.server_after = frame
        if len(marks.server_app) < 2:
            marks.times[frame] = time
        marks.server_app.append(frame)


def _flight_continues(names):
    """A client packet still part of its flight (a TLS 1.2 flight spanning packets)."""
    return not all(name == "Application Data" for name in names)
