"""From transport payloads to OpenVPN packet records, flow by flow.

``Reader.feed(datagram)`` takes what ``ovpndiag.capture`` delivers (UDP
payloads, in-order TCP stream bytes) and returns the records of the OpenVPN
packets it completes, one per packet, in capture order. On the way it:

- decides which flows are OpenVPN (``recognise``), from whatever part of a
  session they show: UDP/TCP port 1194 and the ports given are (TLS-mode or
  static-key); a flow on any other port is held back until its own packets show
  it is (a reset, session ids that answer each other, a data stream) or is not;
- cuts TCP streams at OpenVPN's 2-byte lengths, resynchronising on them where a
  stream is picked up in its middle or has a gap;
- infers each session's wrapping (``infer``) from any of its control packets,
  follows a 2.6 renegotiation into dynamic tls-crypt, applies the user's keys
  (``keyring``);
- follows the TLS inside each session's control channel (``tls``);
- keeps one summary per session for ``--sessions`` (``sessions``).

Records are ``record.Record`` objects: fields named as the JSON keys (see README)
and a few for renderers only (raw bytes, the Wrapping used); the reader fills
them and formats nothing. Packets
of flows not yet decided wait in a queue, so output stays in frame order. Nothing
waits for ever, and what decides a flow is only its own packets and the capture's
clock: a flow is decided by its best guess after ``HOLD_PACKETS`` of its packets
have waited or ``HOLD_TIME`` seconds have passed (``MAX_QUEUE`` is a last resort).
``tally`` counts the payloads that are not plain OpenVPN packets shown: undecided
(shown, on weak evidence), static-key and other protocols (not shown); the caller
counts what it shows.
"""

import collections
import struct
from typing import Dict, List, Optional

from ..protocol import CARRIES_WKC, CLIENT_RESETS, CONTROL_OPCODES, MAX_PLAUSIBLE_FRAME, Opcode, plausible_tcp_frame
from .packetdecode import decode_packet as decode
from .infer import PLAIN, TLS_CRYPT, TLS_CRYPT_V2, WrappingInference, plausible, session_id_of
from .keyring import KeyRing, NOT_CHECKED
from .recognise import OTHER, OPENVPN, STATIC, UNDECIDED, Recognition
from .record import Record
from .sessions import Session, Summaries
from .tls import TLSStream

OPENVPN_PORT = 1194
_TCP_LENGTH = struct.Struct("!H").unpack_from  # OpenVPN's 2-byte frame length over TCP
_CARRY_TLS = (int(Opcode.P_CONTROL_V1), int(Opcode.P_CONTROL_WKC_V1))  # (their payload is TLS bytes)
HOLD_PACKETS = 32  # packets of an undecided flow that wait before its best guess is taken
HOLD_TIME = 2.0  # seconds of capture time a packet waits at most for its flow to be decided
MAX_QUEUE = 50000  # packets waiting in all: beyond, the oldest waiting flow is guessed at once
MAX_TCP_FRAME = MAX_PLAUSIBLE_FRAME  # bigger first frames on an unknown port are not OpenVPN (protocol: why)
RESYNC_WITHIN = 2 * (MAX_TCP_FRAME + 2)  # stream bytes searched for a frame boundary (then: not OpenVPN, or drop)

FLOW_IDLE = 300.0  # seconds of capture time after which an idle flow is forgotten
EXPIRY_CHECK = 20000  # datagrams between looks for idle flows

UNKNOWN = "unknown"  # (and OPENVPN, OTHER, STATIC, UNDECIDED: recognise's verdicts)
PROVISIONAL = "provisional"  # on an OpenVPN port, shown before it proved TLS-mode: still watched for static-key


class Options:
    def __init__(self, ports=(), candidates=None, keys: Optional[KeyRing] = None, sessions: bool = True,
                 tls_details: bool = False, session_class=Session):
        self.ports = {OPENVPN_PORT, *ports}
        self.candidates = candidates  # wrappings a flow may have (infer.candidates_for); None: any
        self.keys = keys or KeyRing()
        self.sessions = sessions  # keep per-session summaries (--sessions)
        self.tls_details = tls_details  # parse TLS messages (versions, suites, certificates) for -V
        self.session_class = session_class  # what keeps a session: (flow, client session id, reader) -> a Session


class Flow:
    def __init__(self, transport, client, server, state):
        self.transport = transport
        self.set_roles(client, server)  # (address, port) each
        self.state = state
        self.last = 0.0  # capture time of the latest packet, for expiry
        self.key = None  # in Reader.flows
        self.direction_keys = []  # in Reader.directions
        self.recognition = None  # Recognition while the flow is UNKNOWN
        self.inference = None  # the current session's key-0 wrapping
        self.reneg_inference = None  # key ids 1-7, when seen before key 0 was decided (mid-session)
        self.session_ids = {}  # sender -> its latest session id
        self.streams = {"client": b"", "server": b""}  # TCP bytes not yet a whole frame
        self.synced = {"client": False, "server": False}  # TCP: on a frame boundary
        self.keys = None
        self.tls = {}
        self.renegotiation = {}  # key_id -> Wrapping its control packets have
        self.sessions: Dict[int, Session] = {}
        self.current = None  # the session data packets belong to
        self.held = 0  # packets of this flow waiting for it to be decided
        self.floated_to = None  # the flow that goes on with this one's sessions (the client floated)
        self.peer_id = None  # of its data packets (--sessions: to find a client that floated)
        self.float_keys = []  # its entries in Reader.session_flows
        self.rendered = None  # a renderer's own per-flow keep (the listing's labels); the reader never reads it
        self.damaged = None  # "cut" (a datagram cut by the snap length) or "gap" (TCP bytes never captured)

    def sender_of(self, address):
        return "client" if address == self.client else "server"

    def set_roles(self, client, server):
        """Who is who: each direction's (src, dst, sport, dport, transport), made once for its records."""
        self.client, self.server = client, server
        self.ends = {"client": (client[0], server[0], client[1], server[1], self.transport),
                     "server": (server[0], client[0], server[1], client[1], self.transport)}


class Reader:
    """``feed()`` datagrams, ``finish()``; see the module docstring.

    ``wants_transport_events``: the one switch for transport signals. A subclass that
    sets it True gets ``transport_event()`` calls: the pipeline and the workers then read
    the capture with ``Transport(events=True)`` (ICMP errors, TCP FIN/RST/refused), which
    costs nothing when it is off."""

    wants_transport_events = False

    def __init__(self, options: Optional[Options] = None):
        self.options = options or Options()
        if getattr(self.options.session_class, "wants_transport_events", False):
            self.wants_transport_events = True  # (sessions that take them: analyze's)
        self.flows: Dict[tuple, Flow] = {}  # one flow per (transport, endpoint, endpoint)
        self.directions: Dict[tuple, tuple] = {}  # (src, sport, dst, dport, transport) -> (flow, sender)
        self.ended = []  # the sessions of expired flows, finished (sessions.FinishedSession)
        self.datagrams = 0
        # (flow, frame, time, sender, data, inference): the inference that decides the
        # packet's layout (None: it needs none), taken on arrival - a new session may
        # bring a new one before the packet's turn comes.
        self.queue = collections.deque()
        self.waiting: Dict[Flow, float] = {}  # undecided flows with packets queued -> first one's time
        self.first_time = None  # what relative times count from: the first frame's (set by the caller), or datagram's
        self.capture_end = None  # the capture's last frame time, once it is read (set by the caller)
        self.tally = collections.Counter()  # payloads by what they were: see TALLY
        self.no_keys = self.options.keys.empty
        # wrapping -> [packets the user's key for it opened or verified, packets it applied to]
        self.key_verdicts = {kind: [0, 0] for kind in self.options.keys.kinds}
        self.sessions = self.options.sessions
        self.session_flows = {}  # (server endpoint, transport, client session id) -> flow (floats)
        fast_path = getattr(self.options.session_class, "fast_path", None)
        if fast_path is not None:  # (analyze's fastcount: it counts packets in their sessions without Records)
            fast_path(self)

    @property
    def not_openvpn(self) -> int:
        """Transport payloads of flows found not to be OpenVPN."""
        return self.tally[OTHER]

    # --- input ---------------------------------------------------------------

    def feed(self, datagram) -> List[Record]:
        """The records this datagram makes ready (usually one, maybe none or many)."""
        try:
            frame, time, src, dst, sport, dport, transport, payload, _cut, _stream, gap, _end = datagram
        except ValueError:  # not 12 fields: a capture.datagrams.TransportEvent (free to try, 3.11)
            return self._transport_event(datagram)
        if self.first_time is None:
            self.first_time = time
        direction = self.directions.get((src, sport, dst, dport, transport))
        flow, sender = direction or self._flow(datagram)
        flow.last = time
        if _cut or gap:  # (rare: bytes the snap length cut or the capture lost - analyze then reads no contents)
            flow.damaged = "cut" if _cut else flow.damaged or "gap"
        self.datagrams += 1
        if self.datagrams % EXPIRY_CHECK == 0:
            self._expire(time)
        state = flow.state
        if state is OPENVPN and payload and not self.queue:  # the common cases
            if transport == "udp":
                record = self.arrived(flow, frame, time, sender, payload)
                return [] if record is None else [record]
            if not gap and len(payload) > 2 and _TCP_LENGTH(payload)[0] == len(payload) - 2 \
                    and flow.synced[sender] and not flow.streams[sender]:
                # TCP: a segment that is one whole frame, on a frame boundary (as _tcp would cut it)
                record = self.arrived(flow, frame, time, sender, payload[2:])
                if record is None:  # (it waits: as _tcp then _drain)
                    return self._drain()
                return [record]
        ready = self.tick(time)  # (the common case, above, never has any waiting)
        if state is OTHER or state is STATIC:
            if payload:
                self.tally[state] += 1
            return ready
        if transport == "udp":
            if payload:
                self._packet(flow, frame, time, sender, payload)
            return ready + self._drain() if ready else self._drain()
        self._tcp(flow, frame, time, payload, gap, sender, ready)
        if self.queue:
            ready += self._drain()
        return ready

    def arrived(self, flow, frame, time, sender, data):
        """The common case, a packet of an OpenVPN flow while nothing waits: its
        ``output`` now, unless it has to wait itself (as _packet then _drain would do,
        without the queue); None when it was queued. A hook too: a subclass may answer
        the commonest packets before the reader looks at them (the listing does, a call
        shorter: 2.5% of its instructions) and hand the rest to this one."""
        if data[0] >> 3 not in CONTROL_OPCODES:
            return self.output(flow, frame, time, sender, data, None)
        inference = flow.inference
        if inference is not None and inference.decided is not None and not data[0] & 7 \
                and data[0] >> 3 not in CLIENT_RESETS:  # _learn, inlined (a reset may start a new session)
            if len(data) >= 9:
                flow.session_ids[sender] = int.from_bytes(data[1:9], "big")
            return self.output(flow, frame, time, sender, data, inference)
        inference = self._learn(flow, sender, data, time)
        if inference is None or inference.decided is not None:
            return self.output(flow, frame, time, sender, data, inference)
        self.queue.append((flow, frame, time, sender, data, inference))
        self._wait(flow, time)
        return None

    def transport_event(self, flow, sender, event) -> None:
        """Hook: a transport signal about ``flow`` (a capture.datagrams.TransportEvent:
        ICMP unreachable / too big, TCP FIN, RST, refused, unanswered), called in frame
        order with the packets' ``output``. ``sender`` is the side whose direction
        ``event.src`` -> ``event.dst`` is. ``flow`` and ``sender`` are None for a flow the
        reader has not seen unless one port is an OpenVPN port (``Options.ports``; a
        refused connection has no payload): then its Flow is made. Here: handed to the
        flow's session (a new one if it has none) when its session class takes them
        (``session.transport_event(event, sender)``, analyze's), else nothing."""
        if flow is None or not self.wants_transport_events or not self.sessions:
            return
        session = flow.current
        if session is None:
            session = flow.current = flow.sessions[None] = self.options.session_class(flow, None, self)
        session.transport_event(event, sender)

    def _transport_event(self, event):
        """An event waits in the queue behind the packets before it, like a packet."""
        ready = self.tick(event.time)
        if self.queue:  # (its head waits: nothing more to drain now)
            self.queue.append((None, event.frame, event.time, None, event, None))
        else:
            self._event_turn(event)
        return ready

    def _event_turn(self, event):
        """A TransportEvent's turn: to the hook, with its flow."""
        ends = (event.src, event.sport)
        direction = self.directions.get(ends + (event.dst, event.dport, event.transport))
        if direction is None:
            direction = self.directions.get((event.dst, event.dport) + ends + (event.transport,))
            if direction is None:
                ports = self.options.ports
                if event.sport not in ports and event.dport not in ports:
                    self.transport_event(None, None, event)
                    return
                self._flow(event)
                direction = self.directions.get(ends + (event.dst, event.dport, event.transport))
        flow = direction[0]
        flow.last = max(flow.last, event.time)
        self.transport_event(flow, flow.sender_of(ends), event)

    def tick(self, now: float) -> List[Record]:
        """The clock moved on to ``now``: what has waited HOLD_TIME is decided and shown.
        feed() calls it for each datagram; a live capture calls it on a quiet interface."""
        return self._overdue(now) if self.waiting else []

    def finish(self) -> List[Record]:
        """End of input: decide what is still undecided and emit everything."""
        for flow in list(self.flows.values()):
            self._decide(flow)
        return self._drain()

    def summaries(self) -> Summaries:
        """One summary dict per session (``Session.to_dict``), made as it is read: those of
        expired flows first, then the open ones (a client's sessions once, by the flow it floated to last)."""
        return Summaries(self.ended + [s for flow in self.flows.values() if flow.floated_to is None
                                       for s in flow.sessions.values()])

    def _flow(self, datagram):
        a, b = (datagram.src, datagram.sport), (datagram.dst, datagram.dport)
        key = (datagram.transport, a, b) if a <= b else (datagram.transport, b, a)
        flow = self.flows.get(key)
        if flow is None:
            ports = self.options.ports
            known = datagram.dport in ports or datagram.sport in ports
            if known:
                server = b if datagram.dport in ports else a
                client = a if server == b else b
            else:  # the side on an ephemeral port is the likely client; the first sender if neither
                client, server = (b, a) if _ephemeral(datagram.dport) and not _ephemeral(datagram.sport) else (a, b)
            flow = Flow(datagram.transport, client, server, UNKNOWN)
            flow.recognition = Recognition(known)
            flow.key = key
            self.flows[key] = flow
        direction = (flow, flow.sender_of(a))
        key = (a[0], a[1], b[0], b[1], datagram.transport)
        self.directions[key] = direction
        flow.direction_keys.append(key)
        return direction

    def _expire(self, now):
        """Forget flows idle for FLOW_IDLE seconds of capture time, so memory stays
        flat over long captures; their sessions are kept for --sessions."""
        idle = [flow for flow in self.flows.values() if now - flow.last > FLOW_IDLE and flow not in self.waiting]
        for flow in idle:
            del self.flows[flow.key]
            for key in flow.direction_keys:
                self.directions.pop(key, None)
            if self.options.sessions and flow.floated_to is None:  # summed up now, so the flow's state can go
                self.ended.extend(session.finish() for session in flow.sessions.values())
                flow.sessions, flow.current = {}, None  # (each refers to the flow: freed now, not by the collector)
            for key in flow.float_keys:
                if self.session_flows.get(key) is flow:
                    del self.session_flows[key]

    def _tcp(self, flow, frame, time, payload, gap, sender, ready):
        buffered = flow.streams[sender]
        if gap:  # what follows a gap starts anywhere in a frame
            buffered, flow.synced[sender] = payload, False
        elif buffered:
            buffered = buffered + payload
        else:
            buffered = payload
        offset = 0
        limit = MAX_TCP_FRAME if flow.state is UNKNOWN and not flow.recognition.known_port else 0xFFFF
        while len(buffered) - offset >= 2:
            length = _TCP_LENGTH(buffered, offset)[0]
            if not flow.synced[sender] or not 1 <= length <= limit:
                # A stream picked up in its middle, after a gap, or gone off the rails:
                # the first offset where whole frames chain is a frame boundary.
                if limit == MAX_TCP_FRAME and (flow.synced[sender] or len(buffered) > RESYNC_WITHIN):
                    self._other(flow)  # on an unknown port: not OpenVPN framing
                    return
                skip = _resync(buffered, offset)
                if skip is None:
                    break  # wait for more bytes (bounded below)
                offset = skip
                flow.synced[sender] = True
                continue
            if len(buffered) - offset - 2 < length:
                break
            data = buffered[offset + 2:offset + 2 + length]
            if flow.state is OPENVPN and not self.queue:
                record = self.arrived(flow, frame, time, sender, data)
                if record is not None:
                    ready.append(record)
            else:
                self._packet(flow, frame, time, sender, data)
            offset += 2 + length
            if flow.state is OTHER or flow.state is STATIC:
                return
        rest = buffered[offset:]
        if not flow.synced[sender] and len(rest) > RESYNC_WITHIN:
            rest = rest[-(MAX_TCP_FRAME + 2):]  # no boundary found: keep what a frame could start in
        flow.streams[sender] = rest

    def _packet(self, flow, frame, time, sender, data):
        """A packet that may have to wait: its flow undecided, or others waiting before it."""
        state = flow.state
        if state is UNKNOWN or state is PROVISIONAL:
            sender = self._recognise(flow, sender, data, time)
            state = flow.state
            if state is OTHER or state is STATIC:
                self.tally[state] += 1
                return
        inference = None
        if state is not UNKNOWN:
            inference = self._learn(flow, sender, data, time)
        self.queue.append((flow, frame, time, sender, data, inference))
        if state is UNKNOWN or (inference is not None and inference.decided is None):
            self._wait(flow, time)  # (after the append: a decision here takes this packet in)

    def _learn(self, flow, sender, data, time):
        """What the wrapping inference and the session ids take from a control packet
        on arrival; returns the inference that decides its layout (None for data)."""
        if not data or data[0] >> 3 not in CONTROL_OPCODES:
            return None
        session_id = session_id_of(data)
        key_id = data[0] & 7
        inference = flow.inference
        if key_id and (flow.reneg_inference is not None or inference is None or inference.decided is None):
            # A renegotiation seen before the session's key 0 was decided (a capture
            # started mid-session): its own inference, every wrapping possible.
            if flow.reneg_inference is None:
                flow.reneg_inference = WrappingInference(self.options.candidates, renegotiation=True)
            inference = flow.reneg_inference
        elif inference is None or (session_id is not None and _new_session(flow, sender, data, session_id, time)):
            # A flow's first session, or another one from the same client port (a
            # reconnect, --try-keys) that the last session's wrapping does not fit.
            inference = flow.inference = WrappingInference(self.options.candidates)
            flow.reneg_inference, flow.renegotiation = None, {}
        if inference.decided is None:
            peer = flow.session_ids.get("server" if sender == "client" else "client")
            inference.observe(data, peer, time)
        if session_id is not None:
            flow.session_ids[sender] = session_id
        return inference

    # --- which flows are OpenVPN -----------------------------------------------

    def _recognise(self, flow, sender, data, time):
        """Show one more packet of an UNKNOWN flow to its recognition; returns the
        packet's sender, relabelled if recognition found the roles reversed."""
        if not data:
            verdict = OTHER if not flow.recognition.known_port else None
        else:
            verdict = flow.recognition.observe(sender, data, time)
        if verdict is None:
            return sender
        if flow.state is PROVISIONAL:  # its roles and inference stand
            flow.state, flow.recognition = verdict, None
            if verdict is STATIC:  # what was shown of it makes no session
                self._other(flow, STATIC)
                flow.sessions.clear()
            return sender
        swap = flow.recognition.client == "server"
        self._settle(flow, verdict, swap)
        return ("server" if sender == "client" else "client") if swap else sender

    def _settle(self, flow, verdict, swap=False):
        """The flow is what ``verdict`` says: mark it; relabel what is queued if the
        first packet came from the server; let the wrapping inference see the queued
        packets, in order."""
        flow.state = verdict
        if verdict is not PROVISIONAL:
            flow.recognition = None
        if verdict is OTHER or verdict is STATIC:
            self._other(flow, verdict)
            return
        flip = {"client": "server", "server": "client"}
        if swap:
            flow.set_roles(flow.server, flow.client)
            for key in flow.direction_keys:
                self.directions[key] = (flow, flip[self.directions[key][1]])
        if any(item[0] is flow for item in self.queue):
            learn = self._learn
            items = [(f, fr, t, s, d, i) if f is not flow else
                     (f, fr, t, flip[s] if swap else s, d, learn(f, flip[s] if swap else s, d, t))
                     for f, fr, t, s, d, i in self.queue]
            self._requeue(items)

    def _other(self, flow, verdict=OTHER):
        """Not OpenVPN TLS traffic: its queued payloads are counted as such and dropped."""
        flow.state, flow.recognition = verdict, None
        held = sum(1 for item in self.queue if item[0] is flow)
        if held:
            self._requeue([item for item in self.queue if item[0] is not flow])
            self.tally[verdict] += held
        self.waiting.pop(flow, None)

    # --- waiting, and deciding what has waited long enough ------------------------

    def _wait(self, flow, time):
        if flow not in self.waiting:
            self.waiting[flow] = time
        flow.held += 1
        if flow.held >= HOLD_PACKETS:
            self._decide(flow)

    def _overdue(self, now):
        """Decide every flow whose first waiting packet is HOLD_TIME old (before this
        datagram is looked at, so that the decision rests on the same packets in
        every reader, whichever other flows it sees)."""
        overdue = [flow for flow, since in self.waiting.items() if now - since > HOLD_TIME]
        for flow in overdue:
            self._decide(flow)
        return self._drain() if overdue else []

    def _decide(self, flow):
        """No more waiting: the flow's best guesses stand."""
        self.waiting.pop(flow, None)
        flow.held = 0
        if flow.state is UNKNOWN:
            recognition = flow.recognition
            verdict = recognition.give_up()
            if verdict is OPENVPN and not recognition.evidence:
                verdict = PROVISIONAL  # the port says OpenVPN; its next packets may still say static-key
            self._settle(flow, verdict, swap=recognition.client == "server")
        if flow.inference is not None:
            flow.inference.best_guess()
        if flow.reneg_inference is not None:
            flow.reneg_inference.best_guess()
        for item in self.queue:  # (an earlier session's inference, replaced since)
            if item[0] is flow and item[5] is not None:
                item[5].best_guess()

    # --- output, in frame order --------------------------------------------------

    def _drain(self):
        queue, ready = self.queue, []
        while queue:
            flow, frame, time, sender, data, inference = queue[0]
            if flow is None:  # a transport event, waiting for the packets before it
                queue.popleft()
                self._event_turn(data)
                continue
            if flow.state is UNKNOWN or (inference is not None and inference.decided is None):
                if len(queue) < MAX_QUEUE:
                    break
                self._decide(flow)
                continue
            queue.popleft()
            if flow.state is OTHER or flow.state is STATIC:
                continue
            if flow.state is UNDECIDED:
                self.tally[UNDECIDED] += 1
            if flow in self.waiting and not any(item[0] is flow for item in queue):
                del self.waiting[flow]
                flow.held = 0
            ready.append(self.output(flow, frame, time, sender, data, inference))
        return ready

    def output(self, flow, frame, time, sender, data, inference):
        """What feed(), tick() and finish() hand out for one packet whose turn has come:
        its ``record()``. A subclass may hand out something else, as the listing hands
        out lines (``flow``: its Flow; ``inference``: what decides its layout, or None)."""
        return self.record(flow, frame, time, sender, data, inference)

    def record(self, flow, frame, time, sender, data, inference) -> Record:
        """The Record of one packet (``output``'s arguments): decoded, its user's keys
        applied, its TLS followed, counted in its session."""
        record = Record(frame, time, flow.ends[sender], len(data), sender, data, time - self.first_time)
        opcode = data[0] >> 3 if data else None
        if opcode in CONTROL_OPCODES:
            if inference is None:  # (a short packet: no session id, nothing learnt)
                inference = flow.inference
            wrapping = inference.decided if inference and inference.decided else PLAIN
            if self.no_keys and not data[0] & 7 and opcode not in CARRIES_WKC:
                # The common case of _control: the flow's own wrapping, nothing to open.
                decode(data, wrapping, record)
                record.decoded_with = wrapping
                if wrapping.kind != "none":
                    record.signed = True  # (hmac_valid None: not checked)
            else:
                self._control(flow, sender, data, record, wrapping, inference is not None and inference.renegotiation)
            if opcode in _CARRY_TLS:
                self._tls(flow, sender, record)
            tlvs = record.raw_tlvs
            if tlvs:
                record.tlvs = [_tlv_name(t) for t in tlvs]
        else:
            decode(data, PLAIN, record)
        if self.sessions:
            self._count(flow, sender, record)
        return record

    def _control(self, flow, sender, data, record, wrapping, renegotiated=False):
        """Decode a control packet into the record under the right wrapping (the
        flow's, or what a renegotiation switched to), opened with the user's keys
        where they apply. ``renegotiated``: the wrapping is already the renegotiation's."""
        key_id = data[0] & 7
        dynamic = False
        if key_id and not renegotiated and wrapping.kind in ("none", "tls-auth"):
            layout = flow.renegotiation.get(key_id)
            if layout is None:
                peer = flow.session_ids.get("server" if sender == "client" else "client")
                fits = plausible(decode(data, wrapping), peer, record.time)
                layout = wrapping if fits or not plausible(decode(data, TLS_CRYPT), None, record.time) \
                    else TLS_CRYPT
                flow.renegotiation[key_id] = layout
            if layout is TLS_CRYPT:
                wrapping, dynamic = TLS_CRYPT, True
        elif data[0] >> 3 in CARRIES_WKC and wrapping.kind != "tls-crypt-v2":
            wrapping = TLS_CRYPT_V2
        opened = NOT_CHECKED
        keys = self.options.keys
        if not keys.empty and not dynamic:
            if flow.keys is None:
                flow.keys = keys.for_flow()
            client_id = flow.session_ids.get("client") if sender == "server" else session_id_of(data)
            opened = flow.keys.open(data, sender, wrapping, client_id)
            if data[0] >> 3 in CARRIES_WKC and sender == "client":  # (-V shows what the WKc said)
                record.wkc_metadata = flow.keys.v2_metadata.get(client_id)
            if opened.valid is False and key_id and wrapping.is_tls_crypt:
                dynamic, opened = True, NOT_CHECKED  # the static key no longer applies: a 2.6 renegotiation
        if opened.decrypted is not None:
            wrapping = wrapping._replace(decrypted=True)
            record.decrypted = opened.decrypted
            decode(opened.decrypted, wrapping, record)
        else:
            decode(data, wrapping, record)
        record.decoded_with = wrapping
        if dynamic:
            record.dynamic = True
        else:  # (a renegotiation under dynamic tls-crypt has a key of its own, never the user's)
            verdicts = self.key_verdicts.get(wrapping.kind)
            if verdicts is not None:
                verdicts[1] += 1
                verdicts[0] += bool(opened.valid)  # (a tls-crypt-v2 key that opens no WKc leaves it None)
        if wrapping.kind != "none":
            record.signed, record.hmac_valid = True, opened.valid
        if opened.key_direction is not None:
            record.key_direction = opened.key_direction

    def _tls(self, flow, sender, record):
        """The TLS records and messages a P_CONTROL_V1 payload completes."""
        length = record.payload_len
        if not length or record.message_packet_id is None:
            return
        stream = self.tls_stream(flow, (sender, record.key_id, record.session_id))
        wire = record.decrypted or record.data
        offset = record.payload_offset
        names = stream.add(record.message_packet_id, wire[offset:offset + length], record.frame)
        if names:
            record.tls = names
            if self.options.tls_details:
                record.tls_details = [d for d in stream.details() if d["frame"] == record.frame]

    def tls_stream(self, flow, key) -> TLSStream:
        """The TLS stream of one direction of one session's key, (sender, key id, session id)."""
        stream = flow.tls.get(key)
        if stream is None:
            options = self.options  # details() only serves -V and --sessions
            stream = flow.tls[key] = TLSStream(details=options.tls_details or options.sessions)
        return stream

    def _count(self, flow, sender, record):
        """--sessions: add the packet to its session's summary."""
        session_id = record.session_id
        self.session_of(flow, sender, session_id, session_id if sender == "client" else record.remote_session_id,
                        record.peer_id).count(record)

    def session_of(self, flow, sender, session_id, client_id, peer_id):
        """The session a packet counts in, by its session id, the client's session id it
        names (its own or, a server's, its remote session id) and peer-id (also for a
        reader that counts packets without a Record: analyze's fastcount)."""
        if not flow.sessions and flow.floated_to is None:
            self._float(flow, client_id, peer_id)
        session = flow.sessions.get(client_id) if client_id is not None else None
        if session is None and client_id is not None:
            # A client's packet, or a server's naming the client's session, of a session not
            # seen yet: the one seen from its middle, if it has no id yet (what came before the
            # client's session id was this session's), else a new one (a server's lone
            # retransmission into a session the capture missed the start of is its own).
            current = flow.current
            if current is not None and current.client_session_id is None:
                del flow.sessions[None]
                current.client_session_id = client_id
                session = flow.sessions[client_id] = current
            else:
                session = flow.sessions[client_id] = self.options.session_class(flow, client_id, self)
            self._floats_by((flow.server, flow.transport, client_id), flow)
        if session is None:
            session = flow.current
        if session is None:
            session = flow.sessions[None] = self.options.session_class(flow, None, self)
        flow.current = session
        if sender == "server" and session_id is not None:
            session.server_session_id = session_id
        if peer_id is not None and flow.peer_id is None:
            flow.peer_id = peer_id
            self._floats_by((flow.server, flow.transport, "peer", peer_id), flow)
        return session

    def _floats_by(self, key, flow):
        """Remember which flow a client session id or peer-id is on, for _float."""
        self.session_flows[key] = flow
        flow.float_keys.append(key)

    def _requeue(self, items):
        """The queue's items replaced in place (a _drain under way holds the same deque)."""
        self.queue.clear()
        self.queue.extend(items)

    def _float(self, flow, client_id, peer_id):
        """A client that floated (NAT rebinding) is a new flow whose first packet names a
        client session id or peer-id that a flow to the same server already has: the new
        flow goes on with that flow's sessions (--sessions shows one). Nothing shown
        depends on it."""
        old = None
        if client_id is not None:
            old = self.session_flows.get((flow.server, flow.transport, client_id))
        if old is None and peer_id is not None:
            old = self.session_flows.get((flow.server, flow.transport, "peer", peer_id))
        if old is None or old is flow or old.floated_to is not None:
            return
        flow.sessions, flow.tls, flow.current, old.floated_to = old.sessions, old.tls, old.current, flow
        flow.peer_id = old.peer_id
        for key in old.float_keys:
            if self.session_flows.get(key) is old:
                self.session_flows[key] = flow
        flow.float_keys += old.float_keys
        for session in old.sessions.values():
            session.floats.append(flow.client)


def _new_session(flow, sender, data, session_id, time):
    """Is this a client reset of a new session that the flow's current wrapping cannot read?"""
    inference = flow.inference
    return (sender == "client" and data[0] >> 3 in CLIENT_RESETS and not data[0] & 7
            and inference.decided is not None and session_id != flow.session_ids.get("client")
            and not plausible(decode(data, inference.decided), None, time))


def _ephemeral(port):
    """Ports clients send from (Linux's and IANA's dynamic ranges both start above this)."""
    return port >= 32768


def _tlv_name(tlv):
    optional, kind, value = tlv
    if kind == 1 and len(value) == 2:
        flags = int.from_bytes(value, "big")
        return "EARLY_NEG_FLAGS" + (" RESEND_WKC" if flags & 1 else "") + (f" 0x{flags:04x}" if flags & ~1 else "")
    return f"TLV type {kind}" + (" (optional)" if optional else "") + f", {len(value)} bytes"


def _resync(buffered, start):
    """A frame boundary in a TCP stream at or after ``start``: the first offset from
    which three whole frames chain, or whole frames up to the very end of what we
    have (a segment's end, where OpenVPN's own writes end); None until one shows.
    (Random bytes chain two plausible frames once in some ten thousand offsets:
    too often inside a big frame; three, or an exact end, hardly ever.)"""
    end = len(buffered)
    for offset in range(start, end - 2):
        position, frames = offset, 0
        while position + 3 <= end:
            length = _TCP_LENGTH(buffered, position)[0]
            if not plausible_tcp_frame(length, buffered[position + 2]) or position + 2 + length > end:
                break
            position += 2 + length
            frames += 1
            if frames == 3 or position == end:
                return offset
    return None
