"""From transport payloads to OpenVPN packet records, flow by flow.

``Reader.feed(datagram)`` takes what ``ovpndiag.capture`` delivers (UDP
payloads, in-order TCP stream bytes) and returns the records of the OpenVPN
packets it completes, one per packet, in capture order. On the way it:

- decides which flows are OpenVPN: UDP/TCP port 1194 and the ports given are;
  a flow on any other port is held back until its own packets show it (a client
  reset answered by a server reset, stable session ids each way) or show it is
  not (an impossible first byte, a TCP length prefix that cannot be OpenVPN);
- cuts TCP streams at OpenVPN's 2-byte lengths;
- infers each flow's wrapping (``infer``), follows a 2.6 renegotiation into
  dynamic tls-crypt, applies the user's keys (``keyring``);
- follows the TLS inside each session's control channel (``tls``);
- keeps one summary per session for ``--sessions``.

Records are plain dicts whose keys are the JSON keys (see README); keys that
start with ``_`` are for renderers only (raw bytes, the Wrapping used). Packets
of flows not yet decided wait in a bounded queue, so output stays in frame order.
"""

import collections
import struct
from typing import Dict, List, Optional

from ..protocol import CARRIES_WKC, OPCODES
from ..render.line import endpoint  # the listing's per-direction labels are made once per flow
from .decode import decode
from .infer import CANDIDATES, PLAIN, TLS_CRYPT, TLS_CRYPT_V2, WrappingInference, plausible, session_id_of
from .keyring import KeyRing, NOT_CHECKED
from .tls import TLSStream

OPENVPN_PORT = 1194
_TCP_LENGTH = struct.Struct("!H").unpack_from  # OpenVPN's 2-byte frame length over TCP
CONTROL_OPCODES = frozenset((1, 2, 3, 4, 5, 7, 8, 10, 11))
CLIENT_RESET_OPCODES = (7, 10, 1)
MAX_QUEUE = 20000  # packets held for undecided flows before guessing
MAX_TCP_FRAME = 2048  # bigger first frames on an unknown port are not OpenVPN
RECOGNITION_LIMIT = 12  # packets an unknown flow gets to show it is OpenVPN

FLOW_IDLE = 300.0  # seconds of capture time after which an idle flow is forgotten
EXPIRY_CHECK = 20000  # datagrams between looks for idle flows

UNKNOWN, OPENVPN, OTHER = "unknown", "openvpn", "other"


class Options:
    def __init__(self, ports=(), candidates=None, keys: Optional[KeyRing] = None, sessions: bool = True,
                 tls_details: bool = False):
        self.ports = {OPENVPN_PORT, *ports}
        self.candidates = candidates  # wrappings a flow may have (infer.candidates_for); None: any
        self.keys = keys or KeyRing()
        self.sessions = sessions  # keep per-session summaries (--sessions)
        self.tls_details = tls_details  # parse TLS messages (versions, suites, certificates) for -V


class Session:
    """What --sessions reports for one OpenVPN session (one client session id)."""

    def __init__(self, flow, client_session_id):
        self.flow = flow
        self.client_session_id = client_session_id
        self.server_session_id = None
        self.packets = collections.Counter()
        self.bytes = collections.Counter()
        self.key_ids = set()
        self.first = self.last = None
        self.hmac = collections.Counter()  # True / False / None verdicts
        self.key_directions = {}
        self.tls = collections.Counter()
        self.malformed = 0

    def count(self, record):
        opcode = record.get("opcode", "malformed")
        self.packets[opcode] += 1
        self.bytes[opcode] += record["length"]
        if "key_id" in record:
            self.key_ids.add(record["key_id"])
        self.first = record["time"] if self.first is None else self.first
        self.last = record["time"]
        if "hmac_valid" in record:
            self.hmac[record["hmac_valid"]] += 1
        if "key_direction" in record:
            self.key_directions[record["_sender"]] = record["key_direction"]
        for name in record.get("tls", ()):
            self.tls[name] += 1
        self.malformed += "malformed" in record

    def _handshake(self, flow):
        """What the first key's TLS handshake shows: version, cipher suite, certificates."""
        found = {}
        for (sender, key_id, session_id), stream in flow.tls.items():
            if not stream or key_id != 0 or session_id not in (self.client_session_id, self.server_session_id):
                continue
            for detail in stream.details():
                if "version" in detail and "cipher_suite" in detail:
                    found["tls_version"], found["tls_cipher_suite"] = detail["version"], detail["cipher_suite"]
                if detail.get("certificates"):
                    found.setdefault("certificates", {})[sender] = detail["certificates"]
                if "description" in detail and "level" in detail:
                    found.setdefault("alerts", []).append(f"{sender}: {detail['level']} {detail['description']}")
        return found

    @property
    def data_channel(self):
        return bool(self.packets["P_DATA_V2"] or self.packets["P_DATA_V1"])

    def to_dict(self) -> dict:
        flow = self.flow
        wrapping = flow.inference.decided if flow.inference and flow.inference.decided else None
        summary = {
            "client": flow.client[0], "client_port": flow.client[1],
            "server": flow.server[0], "server_port": flow.server[1], "transport": flow.transport,
            "client_session_id": None if self.client_session_id is None else f"{self.client_session_id:016x}",
            "server_session_id": None if self.server_session_id is None else f"{self.server_session_id:016x}",
            "wrapping": wrapping.kind if wrapping else None,
            "packets": dict(self.packets), "bytes": dict(self.bytes),
            "key_ids": sorted(self.key_ids), "data_channel": self.data_channel,
            "first": self.first, "last": self.last,
            "duration": round(self.last - self.first, 6) if self.first is not None else 0.0,
        }
        if wrapping is not None and wrapping.kind == "tls-auth":
            summary["hmac_size"] = wrapping.hmac_size
        if self.hmac:
            summary["hmac_valid"] = {str(k).lower(): v for k, v in self.hmac.items()}
        if self.key_directions:
            summary["key_directions"] = dict(self.key_directions)
        if self.tls:
            summary["tls"] = dict(self.tls)
            summary.update(self._handshake(flow))
        if self.malformed:
            summary["malformed"] = self.malformed
        if flow.keys is not None and self.client_session_id in flow.keys.v2_metadata:
            summary["wkc_metadata"] = flow.keys.v2_metadata[self.client_session_id]
        if any(key_id for key_id in self.key_ids) and flow.renegotiation:
            summary["dynamic_tls_crypt"] = any(w.kind == "tls-crypt" for w in flow.renegotiation.values())
        return summary


class Flow:
    def __init__(self, transport, client, server, state):
        self.transport = transport
        self.set_roles(client, server)  # (address, port) each
        self.state = state
        self.last = 0.0  # capture time of the latest packet, for expiry
        self.key = None  # in Reader.flows
        self.direction_keys = []  # in Reader.directions
        self.inference = None
        self.session_ids = {}  # sender -> its latest session id
        self.streams = {"client": b"", "server": b""}  # TCP bytes not yet a whole frame
        self.keys = None
        self.tls = {}
        self.renegotiation = {}  # key_id -> Wrapping its control packets have
        self.sessions: Dict[int, Session] = {}
        self.current = None  # the session data packets belong to
        self.seen = 0
        self.client_reset = None  # (sender, session id) of a client reset seen while unknown
        self.stable = collections.Counter()  # sender -> control packets with its first session id
        self.first_ids = {}

    def sender_of(self, address):
        return "client" if address == self.client else "server"

    def set_roles(self, client, server):
        """Who is who, and the strings every record of the flow repeats."""
        self.client, self.server = client, server
        proto = self.transport.upper()
        self.ends = {"client": (client[0], server[0], client[1], server[1]),
                     "server": (server[0], client[0], server[1], client[1])}
        self.labels = {"client": f"{endpoint(*client)} -> {endpoint(*server)} {proto}",
                       "server": f"{endpoint(*server)} -> {endpoint(*client)} {proto}"}
        # A record starts as a copy of its direction's base, cheaper than a new dict; the
        # keys are in record (and JSON) order, the None values are set per packet.
        self.bases = {sender: {"frame": None, "time": None, "src": src, "dst": dst, "sport": sport,
                               "dport": dport, "transport": self.transport, "length": None,
                               "_sender": sender, "_data": None, "_relative": None,
                               "_label": self.labels[sender]}
                      for sender, (src, dst, sport, dport) in self.ends.items()}


class Reader:
    def __init__(self, options: Optional[Options] = None):
        self.options = options or Options()
        self.flows: Dict[tuple, Flow] = {}  # one flow per (transport, endpoint, endpoint)
        self.directions: Dict[tuple, tuple] = {}  # (src, sport, dst, dport, transport) -> (flow, sender)
        self.ended: List[dict] = []  # summaries of the sessions of expired flows
        self.datagrams = 0
        self.queue = collections.deque()  # (flow, frame, time, sender, data)
        self.first_time = None
        self.not_openvpn = 0  # transport payloads of flows found not to be OpenVPN
        self.no_keys = self.options.keys.empty
        self.sessions = self.options.sessions

    # --- input ---------------------------------------------------------------

    def feed(self, datagram) -> List[dict]:
        """The records this datagram makes ready (usually one, maybe none or many)."""
        frame, time, src, dst, sport, dport, transport, payload, _cut, _stream, gap, _end = datagram
        if self.first_time is None:
            self.first_time = time
        direction = self.directions.get((src, sport, dst, dport, transport))
        flow, sender = direction or self._flow(datagram)
        flow.last = time
        self.datagrams += 1
        if self.datagrams % EXPIRY_CHECK == 0:
            self._expire(time)
        if flow.state is OTHER:
            self.not_openvpn += 1
            return []
        if transport == "udp":
            if payload and flow.state is OPENVPN and not self.queue:
                record = self._at_once(flow, frame, time, sender, payload)
                return [] if record is None else [record]
            if payload:
                self._packet(flow, frame, time, sender, payload)
            return self._drain()
        ready = []
        self._tcp(flow, frame, time, payload, gap, sender, ready)
        if self.queue:
            ready += self._drain()
        return ready

    def _at_once(self, flow, frame, time, sender, data):
        """The common case, a packet of an OpenVPN flow while nothing waits: its record
        now, unless it has to wait itself (as _packet then _drain would do, without
        the queue). None when it was queued."""
        if data[0] >> 3 not in CONTROL_OPCODES:
            return self._record(flow, frame, time, sender, data)
        inference = flow.inference
        if inference is not None and inference.decided is not None:  # _learn, inlined
            if len(data) >= 9:
                flow.session_ids[sender] = int.from_bytes(data[1:9], "big")
            return self._record(flow, frame, time, sender, data)
        self._learn(flow, sender, data, time)
        if _ready(flow, data):
            return self._record(flow, frame, time, sender, data)
        self.queue.append((flow, frame, time, sender, data))
        return None

    def finish(self) -> List[dict]:
        """End of input: decide what is still undecided and emit everything."""
        for flow in self.flows.values():
            if flow.state == UNKNOWN:
                flow.state = OTHER
            if flow.inference is not None:
                flow.inference.best_guess()
        return self._drain()

    def summaries(self) -> List[dict]:
        """One summary per session (``Session.to_dict``): those of expired flows
        first, then the open ones."""
        return self.ended + [s.to_dict() for flow in self.flows.values() for s in flow.sessions.values()]

    def _flow(self, datagram):
        a, b = (datagram.src, datagram.sport), (datagram.dst, datagram.dport)
        key = (datagram.transport, a, b) if a <= b else (datagram.transport, b, a)
        flow = self.flows.get(key)
        if flow is None:
            ports = self.options.ports
            if datagram.dport in ports or datagram.sport in ports:
                server = b if datagram.dport in ports else a
                client = a if server == b else b
                flow = Flow(datagram.transport, client, server, OPENVPN)
            else:
                flow = Flow(datagram.transport, a, b, UNKNOWN)  # roles fixed once recognised
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
        idle = [flow for flow in self.flows.values() if now - flow.last > FLOW_IDLE]
        if not idle:
            return
        waiting = {id(item[0]) for item in self.queue}
        for flow in idle:
            if id(flow) in waiting:
                continue
            del self.flows[flow.key]
            for key in flow.direction_keys:
                self.directions.pop(key, None)
            if self.options.sessions:  # summed up now, so the flow's state can go
                self.ended.extend(session.to_dict() for session in flow.sessions.values())

    def _tcp(self, flow, frame, time, payload, gap, sender, ready):
        if gap:  # after a gap, frames restart unknown
            buffered = payload[_resync(payload):]
        else:
            buffered = flow.streams[sender]
            buffered = buffered + payload if buffered else payload
        offset = 0
        while len(buffered) - offset >= 2:
            length = _TCP_LENGTH(buffered, offset)[0]
            if flow.state == UNKNOWN and not 9 <= length <= MAX_TCP_FRAME:
                flow.state = OTHER
                self.not_openvpn += 1
                return
            if len(buffered) - offset - 2 < length:
                break
            data = buffered[offset + 2:offset + 2 + length]
            if data and flow.state is OPENVPN and not self.queue:
                record = self._at_once(flow, frame, time, sender, data)
                if record is not None:
                    ready.append(record)
            else:
                self._packet(flow, frame, time, sender, data)
            offset += 2 + length
            if flow.state == OTHER:
                return
        flow.streams[sender] = buffered[offset:]

    def _packet(self, flow, frame, time, sender, data):
        if not data and flow.state == UNKNOWN:  # an empty TCP frame: not OpenVPN here
            flow.state = OTHER
        if flow.state == UNKNOWN:
            sender = self._recognise(flow, sender, data, time)
            if flow.state == OTHER:
                self.not_openvpn += 1
                return
        self.queue.append((flow, frame, time, sender, data))
        if flow.state == OPENVPN:
            self._learn(flow, sender, data, time)

    def _learn(self, flow, sender, data, time):
        """What the wrapping inference and the session ids take from a packet on arrival."""
        if not data or data[0] >> 3 not in CONTROL_OPCODES:
            return
        if flow.inference is not None and flow.inference.decided is not None:
            session_id = session_id_of(data)
            if session_id is not None:
                flow.session_ids[sender] = session_id
            return
        if data[0] & 7 == 0:
            if flow.inference is None:
                flow.inference = WrappingInference(self.options.candidates)
            peer = flow.session_ids.get("server" if sender == "client" else "client")
            flow.inference.observe(data, peer, time)
        session_id = session_id_of(data)
        if session_id is not None:
            flow.session_ids[sender] = session_id

    # --- which flows on other ports are OpenVPN ----------------------------------

    def _recognise(self, flow, sender, data, time):
        """Look at one more packet of a flow on an unknown port; returns the
        packet's sender, relabelled if recognition found the roles reversed."""
        flow.seen += 1
        opcode = data[0] >> 3
        if opcode not in OPCODES or flow.seen > RECOGNITION_LIMIT:
            flow.state = OTHER
            return sender
        session_id = session_id_of(data)
        if session_id is None:
            return sender
        flow.first_ids.setdefault(sender, session_id)
        if flow.first_ids[sender] == session_id:
            flow.stable[sender] += 1
        client = None
        if opcode in CLIENT_RESET_OPCODES and data[0] & 7 == 0 and _fits_some_wrapping(data, None, time):
            flow.client_reset = (sender, session_id)
        elif opcode == 8 and flow.client_reset and flow.client_reset[0] != sender \
                and _fits_some_wrapping(data, flow.client_reset[1], time):
            client = flow.client_reset[0]
        elif flow.stable["client"] >= 2 and flow.stable["server"] >= 2:
            client = "client"  # mid-session: keep the first packet's sender as the client
        if client is None:
            return sender
        self._recognised(flow, swap=client == "server")
        return ("server" if sender == "client" else "client") if client == "server" else sender

    def _recognised(self, flow, swap):
        """Mark a flow OpenVPN; relabel what is queued if the first packet came
        from the server; let the wrapping inference see the queued packets."""
        flow.state = OPENVPN
        flip = {"client": "server", "server": "client"}
        if swap:
            flow.set_roles(flow.server, flow.client)
            for key in flow.direction_keys:
                self.directions[key] = (flow, flip[self.directions[key][1]])
            self.queue = collections.deque((f, fr, t, flip[s] if f is flow else s, d)
                                           for f, fr, t, s, d in self.queue)
        for queued_flow, _frame, time, sender, data in list(self.queue):
            if queued_flow is flow:
                self._learn(flow, sender, data, time)

    # --- output, in frame order --------------------------------------------------

    def _drain(self):
        queue, ready = self.queue, []
        while queue:
            flow = queue[0][0]
            if flow.state is OTHER:
                queue.popleft()
                continue
            if flow.state is UNKNOWN or not _ready(flow, queue[0][4]):
                if len(queue) < MAX_QUEUE:
                    break
                if flow.state is UNKNOWN:
                    flow.state = OTHER
                    continue
                flow.inference.best_guess()
            ready.append(self._record(*queue.popleft()))
        return ready

    def _record(self, flow, frame, time, sender, data):
        record = flow.bases[sender].copy()
        record["frame"], record["time"], record["length"] = frame, time, len(data)
        record["_data"], record["_relative"] = data, time - self.first_time
        opcode = data[0] >> 3 if data else None
        if opcode in CONTROL_OPCODES:
            wrapping = flow.inference.decided if flow.inference and flow.inference.decided else PLAIN
            if self.no_keys and not data[0] & 7 and opcode not in CARRIES_WKC:
                # The common case of _control: the flow's own wrapping, nothing to open.
                decode(data, wrapping, record)
                record["_wrapping"] = wrapping
                if wrapping.kind != "none":
                    record["hmac_valid"] = None
            else:
                self._control(flow, sender, data, record, wrapping)
            if opcode == 4 or opcode == 11:
                self._tls(flow, sender, record)
            tlvs = record.get("_tlvs")
            if tlvs:
                record["tlvs"] = [_tlv_name(t) for t in tlvs]
        else:
            decode(data, PLAIN, record)
        if self.sessions:
            self._count(flow, sender, record)
        return record

    def _control(self, flow, sender, data, record, wrapping):
        """Decode a control packet into the record under the right wrapping (the
        flow's, or what a renegotiation switched to), opened with the user's keys
        where they apply."""
        key_id = data[0] & 7
        dynamic = False
        if key_id and wrapping.kind in ("none", "tls-auth"):
            layout = flow.renegotiation.get(key_id)
            if layout is None:
                peer = flow.session_ids.get("server" if sender == "client" else "client")
                fits = plausible(decode(data, wrapping), peer, record["time"])
                layout = wrapping if fits or not plausible(decode(data, TLS_CRYPT), None, record["time"]) \
                    else TLS_CRYPT
                flow.renegotiation[key_id] = layout
            if layout is TLS_CRYPT:
                wrapping, dynamic = TLS_CRYPT, True
        elif data[0] >> 3 in (10, 11) and wrapping.kind != "tls-crypt-v2":
            wrapping = TLS_CRYPT_V2
        opened = NOT_CHECKED
        keys = self.options.keys
        if not keys.empty and not dynamic:
            if flow.keys is None:
                flow.keys = keys.for_flow()
            client_id = flow.session_ids.get("client") if sender == "server" else session_id_of(data)
            opened = flow.keys.open(data, sender, wrapping, client_id)
            if opened.valid is False and key_id and wrapping.is_tls_crypt:
                dynamic, opened = True, NOT_CHECKED  # the static key no longer applies: a 2.6 renegotiation
        if opened.decrypted is not None:
            wrapping = wrapping._replace(decrypted=True)
            record["_wire"] = opened.decrypted
            decode(opened.decrypted, wrapping, record)
        else:
            decode(data, wrapping, record)
        record["_wrapping"] = wrapping
        if dynamic:
            record["dynamic"] = True
        if wrapping.kind != "none":
            record["hmac_valid"] = opened.valid
        if opened.key_direction is not None:
            record["key_direction"] = opened.key_direction

    def _tls(self, flow, sender, record):
        """The TLS records and messages a P_CONTROL_V1 payload completes."""
        length = record.get("payload_len")
        if not length or "message_packet_id" not in record:
            return
        stream = self._tls_stream(flow, (sender, record["key_id"], record["session_id"]))
        wire = record.get("_wire") or record["_data"]
        offset = record["_payload_offset"]
        names = stream.add(record["message_packet_id"], wire[offset:offset + length], record["frame"])
        if names:
            record["tls"] = names
            if self.options.tls_details:
                record["_tls_details"] = [d for d in stream.details() if d["frame"] == record["frame"]]

    def _tls_stream(self, flow, key):
        """The TLS stream of one direction of one session's key, (sender, key id, session id)."""
        stream = flow.tls.get(key)
        if stream is None:
            options = self.options  # details() only serves -V and --sessions
            stream = flow.tls[key] = TLSStream(details=options.tls_details or options.sessions)
        return stream

    def _count(self, flow, sender, record):
        """--sessions: add the packet to its session's summary."""
        session_id = record.get("session_id")
        client_id = session_id if sender == "client" else record.get("remote_session_id")
        session = flow.sessions.get(client_id) if client_id is not None else None
        if session is None and sender == "client" and session_id is not None:
            session = flow.sessions[session_id] = Session(flow, session_id)
        if session is None:
            session = flow.current
        if session is None:
            session = flow.sessions[None] = Session(flow, None)
        flow.current = session
        if sender == "server" and session_id is not None:
            session.server_session_id = session_id
        session.count(record)


def _ready(flow, data):
    """Can this packet be decoded now (its flow's wrapping known, if it needs one)?"""
    if not data or data[0] >> 3 not in CONTROL_OPCODES:
        return True
    return flow.inference is not None and flow.inference.decided is not None


def _tlv_name(tlv):
    optional, kind, value = tlv
    if kind == 1 and len(value) == 2:
        flags = int.from_bytes(value, "big")
        return "EARLY_NEG_FLAGS" + (" RESEND_WKC" if flags & 1 else "") + (f" 0x{flags:04x}" if flags & ~1 else "")
    return f"TLV type {kind}" + (" (optional)" if optional else "") + f", {len(value)} bytes"


def _fits_some_wrapping(data, peer_session_id, time):
    candidates = [TLS_CRYPT_V2] if data[0] >> 3 in (10, 11) else CANDIDATES
    return any(plausible(decode(data, w), peer_session_id, time) for w in candidates)


def _resync(buffered):
    """After a gap in a TCP stream: the first offset where two whole frames chain."""
    for offset in range(min(len(buffered), 4096)):
        position, frames = offset, 0
        while position + 3 <= len(buffered):
            length = struct.unpack_from("!H", buffered, position)[0]
            if not 9 <= length <= MAX_TCP_FRAME or buffered[position + 2] >> 3 not in OPCODES:
                break
            position += 2 + length
            frames += 1
            if frames == 2 or position == len(buffered):
                return offset
        else:
            continue
    return len(buffered)

