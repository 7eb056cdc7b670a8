"""A busy capture's sessions: which client port and session ids each packet belongs to,
what the capture must show per client (the check) and what `ovpndiag analyze` must say
per session (the manifest), also for a copy cut to start later.

A busy scenario's clients are each bound to their own port, so a session is (client port,
the client's session id): a client that fails and tries again makes a new session from the
same port. The server's packets join the client session they acknowledge (its reset acks the
client's), data packets (no session id) the port's latest session.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from .pcapfile import link_payload, read_pcap
from .scenario import BusyClient, Scenario

HARD_RESETS = {7, 8}            # P_CONTROL_HARD_RESET_CLIENT_V2 / _SERVER_V2
DATA = {6, 9}                   # P_DATA_V1 / P_DATA_V2
HMAC_SIZES = {"SHA1": 20, "SHA256": 32, "SHA512": 64}


@dataclass
class Session:
    client_port: int
    session_id: bytes                   # the client's
    server_session_id: bytes | None = None
    packets: list[tuple[int, float, str, int]] = field(default_factory=list)  # (frame, time, "c2s"/"s2c", opcode)

    def opcodes(self, direction: str) -> list[int]:
        return [op for _f, _t, d, op in self.packets if d == direction]

    def data_both_ways(self) -> bool:
        return all(DATA & set(self.opcodes(d)) for d in ("c2s", "s2c"))

    def resets(self) -> bool:
        return any(op in HARD_RESETS for _f, _t, _d, op in self.packets)


def udp_sessions(path: Path, sc: Scenario) -> list[Session]:
    """The sessions of a busy scenario's UDP capture, in order of their first packet. A
    server packet names the client session it acknowledges once (its hard reset does), so
    its session id leads to the session from then on."""
    hmac = HMAC_SIZES[sc.server.auth] if sc.wrapping == "tls-auth" else 0
    sessions: list[Session] = []
    by_client, by_server, latest = {}, {}, {}
    for frame, (ts, linktype, raw) in enumerate(read_pcap(path), start=1):
        _vlans, ip = link_payload(linktype, raw)
        if ip is None or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 15) * 4:]
        sport, dport = struct.unpack("!HH", udp[:4])
        pkt = udp[8:]
        if not pkt or sc.port not in (sport, dport):
            continue
        direction, port, op = ("c2s", sport, pkt[0] >> 3) if dport == sc.port else ("s2c", dport, pkt[0] >> 3)
        session = None
        if op in DATA:
            session = latest.get(port)
        elif direction == "c2s":
            key = (port, pkt[1:9])
            session = by_client.get(key)
            if session is None:
                session = by_client[key] = Session(port, pkt[1:9])
                sessions.append(session)
            latest[port] = session
        else:
            session = by_server.get((port, pkt[1:9]))
            acks = 1 + 8 + hmac + 8          # opcode, session id, HMAC, replay packet-id and time
            if session is None and len(pkt) > acks and pkt[acks]:
                remote = pkt[acks + 1 + 4 * pkt[acks]:][:8]
                session = by_client.get((port, remote))
                if session is not None:
                    session.server_session_id = pkt[1:9]
                    by_server[(port, pkt[1:9])] = session
        if session is None:                 # (a packet of no known session: the check says so)
            session = Session(port, b"")
            sessions.append(session)
        session.packets.append((frame, ts, direction, op))
    return sessions


def check_busy(path: Path, sc: Scenario) -> list[str]:
    """Per client port: as many sessions as the client made attempts; a good session answered
    and with data both ways; a session with the wrong tls-auth settings never answered; one
    refused inside TLS answered (the server's reset and TLS) but without data."""
    sessions = udp_sessions(path, sc)
    problems = []
    clients = {c.port: c for c in sc.clients}
    for s in sessions:
        if s.client_port not in clients:
            problems.append(f"a session from port {s.client_port}, which no client has")
        elif not s.session_id:
            problems.append(f"port {s.client_port}: a packet of no session (frame {s.packets[0][0]})")
    for port, c in clients.items():
        mine = [s for s in sessions if s.client_port == port and s.session_id]
        if len(mine) != c.attempts:
            problems.append(f"port {port} ({c.kind}): {len(mine)} sessions, expected {c.attempts}")
        for s in mine:
            answered = bool(s.opcodes("s2c"))
            if c.good and not s.data_both_ways():
                problems.append(f"port {port} (good): no data both ways")
            elif not c.good and (DATA & set(s.opcodes("c2s") + s.opcodes("s2c"))):
                problems.append(f"port {port} ({c.kind}): data packets in a failed session")
            if answered != (c.verdict != "server-silent"):
                problems.append(f"port {port} ({c.kind}): server {'answered' if answered else 'silent'}")
    return problems


def first_frame_after(path: Path, seconds: float) -> int:
    """The 1-based number of the first frame at least ``seconds`` after the capture's first:
    where a copy cut ``seconds`` in starts (derive.py cut)."""
    frames = read_pcap(path)
    return next(n for n, (ts, _l, _f) in enumerate(frames, start=1) if ts >= frames[0][0] + seconds)


def expected_sessions(path: Path, sc: Scenario, since: float | None = None) -> list[dict]:
    """What `ovpndiag analyze` must say about each session of ``sc``'s capture at ``path``, in
    order of first packet: ``verdict`` without keys, ``verdict_with_keys`` given the server's.

    ``since``: about the copy of it cut ``since`` seconds in (derive.py cut) instead: the
    sessions with a packet there, frames counted in the copy. A session the cut enters
    (neither side's hard reset is left in the copy) is ``ok`` if data still flows both ways
    and ``incomplete`` otherwise: how it started, and so why it failed, is gone."""
    sessions = udp_sessions(path, sc)
    first = 1 if since is None else first_frame_after(path, since)
    clients = {c.port: c for c in sc.clients}
    out = []
    for s in sessions:
        kept = [p for p in s.packets if p[0] >= first]
        if not kept:
            continue
        c: BusyClient = clients[s.client_port]
        verdicts = (c.verdict, c.verdict_with_keys)
        if first > 1:
            s = Session(s.client_port, s.session_id, s.server_session_id, kept)
            if not s.resets():
                verdicts = ("ok", "ok") if s.data_both_ways() else ("incomplete", "incomplete")
        out.append({"client_port": s.client_port, "client": c.kind,
                    "session_id": s.session_id.hex(),
                    "server_session_id": s.server_session_id.hex() if s.server_session_id else None,
                    "first_frame": kept[0][0] - first + 1, "packets": len(kept),
                    "verdict": verdicts[0], "verdict_with_keys": verdicts[1]})
    return out
