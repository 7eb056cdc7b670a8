"""--sessions: one summary per OpenVPN session (one client session id), kept small.

A ``Session`` counts the packets of a session while its flow is read (``count``, one call
per record). When the reader forgets the flow (idle: its state can go), ``finish()``
turns each of its sessions into a ``FinishedSession``: the summary it would show, packed
into one ``bytes`` (marshal of the values; the key tuples - of the summary, and of its
name -> count tables - are shared by every summary with the same keys), holding nothing
of the flow - not its TLS streams, wrapping inference, buffers or records. A finished
session costs about 350 bytes instead of about 4 KB of dict, and ``to_dict()`` gives back
exactly the dict it packed.

``Summaries`` is what ``Reader.summaries()`` returns: a sequence of summary dicts made
one at a time as they are read, so writing 100,000 of them never holds 100,000 dicts.
"""

import marshal
from collections.abc import Sequence

_SHARED_KEYS = {}  # the summaries' key tuples (a handful of distinct ones), shared
_TABLE_KEYS = {}  # key tuple of a name -> count table -> its number in _TABLES
_TABLES = []  # those key tuples, by number
TABLES = frozenset(("packets", "bytes", "tls", "hmac_valid"))  # summary keys whose value is such a table


class Session:
    """The counters of one live session; ``flow`` is the flow it started on. Kept small
    while live too: one table of [packets, bytes] per opcode, key ids as a bit mask, and
    the tables most sessions never need made only when needed."""

    __slots__ = ("flow", "client_session_id", "server_session_id", "counts", "key_ids",
                 "first", "last", "hmac", "key_directions", "tls", "malformed", "floats")

    def __init__(self, flow, client_session_id, reader=None):
        self.flow = flow
        self.client_session_id = client_session_id
        self.server_session_id = None
        self.counts = {}  # opcode name -> [packets, bytes], in the order first seen
        self.key_ids = 0  # bit n: key id n seen
        self.first = self.last = None
        self.hmac = None  # True / False / None verdict -> packets, once there is one
        self.key_directions = None  # sender -> key direction, once known
        self.tls = None  # TLS record / message name -> count, once there is one
        self.malformed = 0
        self.floats = []  # (address, port) the client went on from, in order

    def count(self, record):
        opcode = record.opcode or "malformed"
        counts = self.counts.get(opcode)
        if counts is None:
            self.counts[opcode] = [1, record.length]
        else:
            counts[0] += 1
            counts[1] += record.length
        if record.key_id is not None:
            self.key_ids |= 1 << record.key_id
        if self.first is None:
            self.first = record.time
        self.last = record.time
        if record.signed:
            if self.hmac is None:
                self.hmac = {}
            self.hmac[record.hmac_valid] = self.hmac.get(record.hmac_valid, 0) + 1
        if record.key_direction is not None:
            if self.key_directions is None:
                self.key_directions = {}
            self.key_directions[record.sender] = record.key_direction
        if record.tls:
            tls = self.tls
            if tls is None:
                tls = self.tls = {}
            for name in record.tls:
                tls[name] = tls.get(name, 0) + 1
        if record.malformed is not None:
            self.malformed += 1

    def _handshake(self, flow):
        """What the first key's TLS handshake shows: version, cipher suite, certificates."""
        found = {}
        for (sender, key_id, session_id), stream in flow.tls.items():
            if not stream or key_id != 0 or session_id not in (self.client_session_id, self.server_session_id):
                continue
            for detail in stream.facts():
                if "version" in detail and "cipher_suite" in detail:
                    found["tls_version"], found["tls_cipher_suite"] = detail["version"], detail["cipher_suite"]
                if detail.get("certificates"):
                    found.setdefault("certificates", {})[sender] = detail["certificates"]
                if "description" in detail and "level" in detail:
                    found.setdefault("alerts", []).append(f"{sender}: {detail['level']} {detail['description']}")
        return found

    @property
    def data_channel(self):
        return "P_DATA_V2" in self.counts or "P_DATA_V1" in self.counts

    def to_dict(self) -> dict:
        flow = self.flow
        wrapping = flow.inference.decided if flow.inference and flow.inference.decided else None
        summary = {
            "client": flow.client[0], "client_port": flow.client[1],
            "server": flow.server[0], "server_port": flow.server[1], "transport": flow.transport,
            "client_session_id": None if self.client_session_id is None else f"{self.client_session_id:016x}",
            "server_session_id": None if self.server_session_id is None else f"{self.server_session_id:016x}",
            "wrapping": wrapping.kind if wrapping else None,
            "packets": {opcode: counts[0] for opcode, counts in self.counts.items()},
            "bytes": {opcode: counts[1] for opcode, counts in self.counts.items()},
            "key_ids": [key_id for key_id in range(8) if self.key_ids >> key_id & 1], "data_channel": self.data_channel,
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
        if self.floats:
            summary["floated_to"] = [{"client": address, "client_port": port} for address, port in self.floats]
        if flow.keys is not None and self.client_session_id in flow.keys.v2_metadata:
            summary["wkc_metadata"] = flow.keys.v2_metadata[self.client_session_id]
        if self.key_ids & ~1 and flow.renegotiation:  # (a key id other than 0)
            summary["dynamic_tls_crypt"] = any(w.kind == "tls-crypt" for w in flow.renegotiation.values())
        elif flow.reneg_inference is not None and flow.reneg_inference.decided is not None:  # seen mid-session
            summary["dynamic_tls_crypt"] = flow.reneg_inference.decided.kind == "tls-crypt"
        return summary

    def finish(self) -> "FinishedSession":
        """The summary as it is now, packed; nothing of the flow stays referenced."""
        return FinishedSession(self.to_dict())


class FinishedSession:
    """A session whose flow is gone: its summary, packed (see the module docstring)."""

    __slots__ = ("keys", "values")

    def __init__(self, summary: dict):
        keys = tuple(summary)
        self.keys = _SHARED_KEYS.setdefault(keys, keys)
        values = tuple(_table(value) if key in TABLES else value for key, value in summary.items())
        try:
            self.values = marshal.dumps(values)
        except ValueError:  # (a value marshal does not know: kept as it is)
            self.values = values

    def to_dict(self) -> dict:
        values = self.values
        if type(values) is bytes:
            values = marshal.loads(values)
        summary = dict(zip(self.keys, values))
        for key in TABLES.intersection(summary):
            number, *counts = summary[key]
            summary[key] = dict(zip(_TABLES[number], counts))
        return summary


def _table(counts: dict) -> tuple:
    """A name -> count table as (number of its key tuple, counts...)."""
    keys = tuple(counts)
    number = _TABLE_KEYS.get(keys)
    if number is None:
        number = _TABLE_KEYS[keys] = len(_TABLES)
        _TABLES.append(keys)
    return (number, *counts.values())


class Summaries(Sequence):
    """Summary dicts of sessions (live or finished), each made when it is read."""

    def __init__(self, sessions):
        self._sessions = sessions

    def __len__(self):
        return len(self._sessions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [session.to_dict() for session in self._sessions[index]]
        return self._sessions[index].to_dict()

    def __iter__(self):
        return (session.to_dict() for session in self._sessions)


def pack_summaries(summaries: list) -> bytes:
    """Summary dicts as one bytes, for a worker to send (marshal: fast, exact types)."""
    try:
        return b"m" + marshal.dumps(summaries)
    except ValueError:  # (a value marshal does not know)
        import pickle

        return b"p" + pickle.dumps(summaries)


def unpack_summaries(packed: bytes) -> list:
    if packed[:1] == b"m":
        return marshal.loads(memoryview(packed)[1:])
    import pickle

    return pickle.loads(memoryview(packed)[1:])


class PackedSummaries(Sequence):
    """Summary dicts packed a flow at a time ((sessions, pack_summaries(...)) pairs),
    unpacked as they are read."""

    def __init__(self, flows):
        self._flows = flows
        self._length = sum(count for count, _packed in flows)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        return list(self)[index]

    def __iter__(self):
        for _count, packed in self._flows:
            yield from unpack_summaries(packed)
