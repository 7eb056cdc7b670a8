"""What ``analyze`` keeps of a session while its flow is read: a ``SessionTrace``.

A SessionTrace is the reader's Session (``dissect.sessions``) that keeps, instead of
--sessions' counts, the landmarks of its control packets as they come (``landmarks.Landmarks``):
how far the handshake got and who stopped answering or acknowledging whom - resets,
hellos, flights, alerts, packet-ids sent, acknowledged and sent again. Data packets
cost a counter: the first one each way and how many. Kept too, only when
they may be needed: the raw bytes of the client's first unanswered packets (the key
trials) and, with a key log, the TLS bytes of each direction (decryption).

When the session is finished (its flow idle, or the capture read) ``to_dict()``
judges it (``judge``) and keeps only the analysis: verdict, evidence and timeline.
"""

import marshal
import zlib

from ..dissect.sessions import Session
from ..protocol import DATA_OPCODES, Opcode
from .events import describe
from .landmarks import Landmarks

TRIAL_PACKETS = 2  # unanswered client packets kept for the key trials
_DATA = frozenset(DATA_OPCODES)
_CARRY_TLS = (int(Opcode.P_CONTROL_V1), int(Opcode.P_CONTROL_WKC_V1))


class Context:
    """What every session of one run shares: the user's keys and settings for the key
    trials (``keys``, ``digest``, ``server_direction``) and the key log (``keylog``)."""

    def __init__(self, keys=None, digest=None, server_direction=None, keylog=None):
        self.keys, self.digest, self.server_direction, self.keylog = keys, digest, server_direction, keylog


def trace_class(context: Context):
    """The SessionTrace class of one run (``Options.session_class``): its sessions share ``context``."""
    return type("SessionTrace", (SessionTrace,), {"__slots__": (), "context": context})


class SessionTrace(Session):
    """Made by the reader for each session (``trace_class`` gives the class of a run)."""

    __slots__ = ("reader", "first_frame", "last_frame", "marks", "data", "trial", "chunks", "events", "judged")
    context = Context()
    wants_transport_events = True  # the reader asks the capture for ICMP errors and TCP ends
    fast_path = None  # what takes over the reader's output while analyze reads (run.analyses: fastcount.install)

    def __init__(self, flow, client_session_id, reader=None):
        super().__init__(flow, client_session_id)
        self.reader = reader  # (its capture_end, once the capture is read)
        self.first_frame = self.last_frame = None
        context = self.context
        self.marks = Landmarks()  # what the control packets showed
        self.data = None  # [client first frame, time, count, server first frame, time, count] once there is data
        self.trial = None  # the client's first packets while the server has said nothing (raw bytes)
        self.chunks = {} if context.keylog is not None else None  # sender -> {packet-id: (frame, TLS bytes)}
        self.events = None  # transport events: (frame, time, kind, text, sender)
        self.judged = None

    def count(self, record):
        """(Session.count's tables are --sessions'; an analysis needs none of them.)"""
        if record.opcode_value in _DATA:
            self.data_packet(record.frame, record.time, record.sender)
        else:
            self.control_packet(record.frame, record.time, record.sender, record.opcode_value, record.key_id,
                                record.message_packet_id, record.acks, record.tls, record.hmac_valid, record.data,
                                record.decrypted, record.payload_offset, record.payload_len)

    def data_packet(self, frame, time, sender):
        """A data packet (count's, and fastcount's without a Record): a counter."""
        if self.first_frame is None:
            self.first_frame, self.first = frame, time
        self.last_frame, self.last = frame, time
        data = self.data
        if data is None:
            data = self.data = [None, None, 0, None, None, 0]
        at = 0 if sender == "client" else 3
        if data[at] is None:
            data[at], data[at + 1] = frame, time
        data[at + 2] += 1

    def control_packet(self, frame, time, sender, opcode, key_id, packet_id, acks, tls, hmac_valid, raw,
                       decrypted, payload_offset, payload_len):
        """Any other packet (count's, and fastcount's without a Record): its landmarks,
        and the bytes the key trials and a key log need (``raw``: the packet as sent)."""
        if self.first_frame is None:
            self.first_frame, self.first = frame, time
        self.last_frame, self.last = frame, time
        self.marks.add(frame, time, sender, opcode, key_id, packet_id, acks, tls, hmac_valid)
        if sender == "client":
            if self.server_session_id is None and (self.trial is None or len(self.trial) < TRIAL_PACKETS):
                self.trial = (self.trial or ()) + (raw,)
        chunks = self.chunks
        if chunks is not None and opcode in _CARRY_TLS and key_id == 0 and payload_len \
                and packet_id is not None:  # (a reset's payload is TLVs: tls-crypt-v2's)
            wire = decrypted or raw
            chunks.setdefault(sender, {}).setdefault(packet_id, (frame, bytes(wire[payload_offset:payload_offset
                                                                                   + payload_len])))

    def transport_event(self, event, sender):
        """A capture.datagrams.TransportEvent for this session's flow (``sender``: the side
        whose packets it is about), kept as (frame, time, kind, text, sender): events.describe."""
        kind, text = describe(event, sender)
        if kind == "unanswered" and event.syns < 2:
            kind = "unanswered-once"  # (a single SYN: the capture may end before the client's next try)
        if self.events is None:
            self.events = []
        self.events.append((event.frame, event.time, kind, text, sender))
        if self.first is None:
            self.first, self.first_frame = event.time, event.frame
        if event.syn_frame is not None and event.syn_frame < self.first_frame:
            self.first_frame = event.syn_frame  # (a refused or unanswered connection began with its SYN)
        if self.last is None or event.time > self.last:
            self.last = event.time
        if self.last_frame is None or event.frame > self.last_frame:
            self.last_frame = event.frame

    def tls_streams(self):
        """Per sender, the key-0 TLS bytes as [(frame, bytes)] in packet-id order from the
        first (a gap ends them: what follows cannot be read in order)."""
        streams = {}
        for sender, by_id in (self.chunks or {}).items():
            ordered, expected = [], min(by_id) if by_id else 0
            while expected in by_id:
                ordered.append(by_id[expected])
                expected += 1
            streams[sender] = ordered
        return streams

    def finish(self) -> "FinishedAnalysis":
        """The analysis, packed (the reader calls it when the flow has been idle long)."""
        return FinishedAnalysis(self.to_dict())

    def to_dict(self) -> dict:
        if self.judged is None:
            from .judge import judge

            self.judged = judge(self)
            # what judging needed is not needed any more (a finished session keeps the analysis only)
            self.marks, self.trial, self.chunks, self.reader = None, None, None, None
        return self.judged


class FinishedAnalysis:
    """A finished session's analysis, compressed (a capture of a busy server holds hundreds
    of thousands): marshalled, then deflated with a preset dictionary of what analyses
    have in common - key names, verdicts, the timeline's and evidence's usual words -
    which takes about 900 bytes to about 300, faster than plain zlib. ``to_dict()`` gives
    it back as it was."""

    __slots__ = ("keys", "packed")
    _KEYS = {}  # the analyses' key tuples (one or two), shared
    _DEFLATE = None  # a compressor primed with _COMMON, copied for each analysis

    def __init__(self, analysis: dict):
        keys = tuple(analysis)
        self.keys = self._KEYS.setdefault(keys, keys)
        if FinishedAnalysis._DEFLATE is None:
            FinishedAnalysis._DEFLATE = zlib.compressobj(1, zdict=_common())
        deflate = self._DEFLATE.copy()
        self.packed = deflate.compress(marshal.dumps(tuple(analysis.values()))) + deflate.flush()

    def to_dict(self) -> dict:
        inflate = zlib.decompressobj(zdict=_common())
        return dict(zip(self.keys, marshal.loads(inflate.decompress(self.packed))))


def _common() -> bytes:
    """The preset dictionary: an analysis's values as marshal writes them, with the words
    analyses share (fixed here: what was packed with it must unpack with it)."""
    global _COMMON
    if _COMMON is None:
        from .. import verdicts

        typical = ("127.0.0.1", 40000, "127.0.0.1", 1194, "udp", "0123456789abcdef", "fedcba9876543210",
                   "tls-auth", 1.0e9, 1.0e9, [1, 100], "data", "ok", ["frame 1: the client's reset; the server never "
                   "answered", "frame 1: first data packet from the client; frame 2: first from the server (1 and 1 "
                   "in all)", "the capture ends 1.0 s after the session's last packet and shows no later session of "
                   "this client: it may go on past the capture (had it ended there: ", "frame 1: the client began a "
                   "new session: it gave this one up", "TLS handshake complete; then 1 TLS packets from the client "
                   "and 1 from the server (encrypted: key-method 2, PUSH_REQUEST/PUSH_REPLY or AUTH_FAILED), and no "
                   "data packet"], None, {"client": 0, "server": 0}, {"client": 0, "server": 0}, 0.0001, 0,
                   {"client": 1, "server": 1}, "TLS 1.3", [
                       [1, 0.0, "client", "reset (P_CONTROL_HARD_RESET_CLIENT_V2)"], [2, 0.0001, "server", "reset (rtt "],
                       [3, 0.0001, "client", "Client Hello"],
                       [4, 0.0001, "server", "Server Hello, Change Cipher Spec, Application Data x5 (TLS 1.3, "
                        "TLS_AES_256_GCM_SHA384) (to 5)"],
                       [4, 0.0001, "server", "Server Hello, Certificate, Server Key Exchange, Certificate Request, "
                        "Server Hello Done (TLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)"],
                       [6, 0.0001, "client", "Change Cipher Spec, Application Data x3"],
                       [7, 0.0001, "server", "TLS handshake complete"],
                       [8, 0.0001, "client", "encrypted messages (1 packets)"],
                       [9, 0.0001, "client", "data (1 packets)"], [10, 0.0001, "server", "data (1 packets)"],
                       [11, 0.0001, "client", "last control packet: 1 resent, 1 never acknowledged"],
                       [12, 0.0001, "server", "the server closed the TCP connection (FIN)"]],
                   [0.0, 1, 0.0, True, 1], 0.0, sorted(verdicts.VERDICTS))
        _COMMON = marshal.dumps(typical)
    return _COMMON


_COMMON = None
