#!/usr/bin/env python3
"""The control-heavy benchmark capture: thousands of short sessions of every wrapping.

Repeats the 240 real short sessions in data/short-sessions.pcap.gz (record_sessions.py:
every wrapping, UDP and TCP, real OpenVPN 2.6 peers) until the wanted number of sessions,
24,000 by default (~440,000 OpenVPN packets, 546,000 frames), 100 new sessions a second:
24,000 in four minutes, 144,000 in 24 (long enough for a reader to forget idle flows).
Every copy is a distinct session, consistently:

- its own client address and port (10.0.0.N, port 20000-59999; the server stays 127.0.0.1
  on its port), IP header checksums recomputed, UDP checksums zeroed (TCP ones left stale);
- its own session ids: client and server session id, and every ACKed remote session id,
  XORed with a 64-bit mask of the copy;
- its own time: frames shifted by the copy's start, and the replay header's net_time by the
  same whole seconds;
- control packets re-wrapped with the recording's test keys (captures/keys/), so HMACs and
  tls-crypt tags still verify with those keys (``--tls-auth``/``--tls-crypt``, one wrapping
  per port). The TLS inside and the data packets (P_DATA_V2: the data channel's own keys)
  are copied unchanged: byte for byte what the real peers sent.

``build(path, sessions)`` writes a classic pcap; ``cached(sessions)`` builds it once into
$XDG_CACHE_HOME/ovpndiag-bench/ (~/.cache) and returns the path; what it is made of
(the seed capture, this file) is in the name, so a change builds anew.

    python3 benchmarks/sessions_capture.py [--sessions 24000] [--out FILE]
"""

import argparse
import gzip
import hashlib
import heapq
import json
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ovpndiag.keys import read_key  # noqa: E402
from ovpndiag.wrap import CLIENT, SERVER, NoWrapping, TLSAuth, TLSCrypt, TLSCryptV2Client  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
SEED = DATA / "short-sessions.pcap.gz"
DESCRIPTION = DATA / "short-sessions.json"
RATE = 100.0  # sessions started per second: 24,000 in four minutes (144,000: 24 minutes)
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
RECORD = struct.Struct("<IIII")
CONTROL = {1, 2, 3, 4, 5, 7, 8, 10, 11}  # opcodes of control packets (the rest: data)
P_ACK_V1 = 5


def ports():
    """Every server port of the seed capture, for ``-p`` and Decode As."""
    return sorted({server["port"] for server in json.loads(DESCRIPTION.read_text())["servers"]})


def wrappers(server):
    """(wrapper that opens a client packet, that opens a server packet, that wraps a
    client packet, that wraps a server packet) for one server of the description."""
    kind = server["wrapping"]
    if kind == "none":
        return (NoWrapping(),) * 4
    key = read_key(ROOT / "captures" / server["client"]["key"])
    if kind == "tls-auth":
        client = TLSAuth(key, server["client"]["key_direction"], server["auth"])
        return client.peer(), client, client, client.peer()
    if kind == "tls-crypt":
        return TLSCrypt(key, SERVER), TLSCrypt(key, CLIENT), TLSCrypt(key, CLIENT), TLSCrypt(key, SERVER)
    client = TLSCryptV2Client(key)  # tls-crypt with the client's Kc, its WKc on opcodes 10 and 11
    return TLSCrypt(key.kc, SERVER), client, client, TLSCrypt(key.kc, SERVER)


class Packet:
    """One frame of a seed session, taken apart once: the frame, where its transport
    header is, and each OpenVPN packet in it as (offset, sender, opened or None)."""
    __slots__ = ("time", "frame", "l4", "client_is_source", "packets")


def _pcap_frames(data):
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, length, _ = RECORD.unpack_from(data, offset)
        yield seconds + micros / 1e6, data[offset + 16:offset + 16 + length]
        offset += 16 + length


def seed_sessions():
    """The seed capture's sessions, one list of Packets per client (address, port, transport)."""
    description = json.loads(DESCRIPTION.read_text())
    servers = {(s["transport"], s["port"]): (s, wrappers(s)) for s in description["servers"]}
    data = gzip.decompress(SEED.read_bytes())
    sessions, done = {}, []
    for time, frame in _pcap_frames(data):
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        l4 = 14 + (frame[14] & 0x0F) * 4
        transport = {17: "udp", 6: "tcp"}.get(frame[23])
        sport, dport = struct.unpack_from("!HH", frame, l4)
        server = servers.get((transport, dport)) or servers.get((transport, sport))
        if server is None:
            continue
        packet = Packet()
        packet.time, packet.frame, packet.l4 = time, frame, l4
        packet.client_is_source = (transport, dport) in servers
        sender = "client" if packet.client_is_source else "server"
        client_port = sport if packet.client_is_source else dport
        packet.packets = [(at, sender, _open(frame[at:at + length], sender, server[1]))
                          for at, length in _openvpn_packets(frame, l4, transport)]
        key = (transport, client_port)
        if key in sessions and packet.client_is_source and _starts_session(frame, l4, transport, sessions[key]):
            done.append(sessions.pop(key))  # the client's port was used again, by a new session
        sessions.setdefault(key, []).append(packet)
    return done + list(sessions.values())


def _starts_session(frame, l4, transport, session):
    """A client's TCP SYN, or its UDP hard reset (opcode 7, or 10 for tls-crypt-v2) with
    another session id than the session's first packet (not a resent reset)."""
    if transport == "tcp":
        return frame[l4 + 13] & 0x12 == 0x02
    return len(frame) > l4 + 17 and frame[l4 + 8] >> 3 in (7, 10) \
        and frame[l4 + 9:l4 + 17] != session[0].frame[l4 + 9:l4 + 17]


def _openvpn_packets(frame, l4, transport):
    """(offset, length) of each OpenVPN packet in the frame. TCP: the recorded segments
    each hold whole packets (loopback, one write per packet) - checked here."""
    if transport == "udp":
        return [(l4 + 8, len(frame) - l4 - 8)] if len(frame) > l4 + 8 else []
    at, found = l4 + (frame[l4 + 12] >> 4) * 4, []
    while at < len(frame):
        length = struct.unpack_from("!H", frame, at)[0]
        if at + 2 + length > len(frame):
            raise ValueError("a TCP segment of the seed capture splits an OpenVPN packet")
        found.append((at + 2, length))
        at += 2 + length
    return found


def _open(packet, sender, wrappers_of_server):
    """(plain packet, replay packet-id, net_time, WKc, wrapper to send it with) of a
    control packet; None for data packets (copied as they are)."""
    if packet[0] >> 3 not in CONTROL:
        return None
    open_client, open_server, wrap_client, wrap_server = wrappers_of_server
    opened = (open_client if sender == "client" else open_server).unwrap(packet)  # WrapError: a bad seed
    return (opened.plain, opened.replay_packet_id, opened.net_time, opened.wkc,
            wrap_client if sender == "client" else wrap_server)


def _with_session_ids(plain, mask):
    """The plain packet with its session id and any remote session id XORed with ``mask``:
    op | session id | ACK count | ACKs | remote session id (if ACKs) | ..."""
    plain = bytearray(plain)
    struct.pack_into("!Q", plain, 1, struct.unpack_from("!Q", plain, 1)[0] ^ mask)
    acks = plain[9]
    if acks:
        at = 10 + 4 * acks
        struct.pack_into("!Q", plain, at, struct.unpack_from("!Q", plain, at)[0] ^ mask)
    return bytes(plain)


def _ip_checksum(header):
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def copy_of(session, number, start):
    """The frames (time, bytes) of copy ``number`` of a seed session, starting at ``start``."""
    shift = start - session[0].time
    whole = int(round(shift))  # net_time moves with the frames, in its whole seconds
    mask = int.from_bytes(hashlib.blake2b(number.to_bytes(8, "big"), digest_size=8).digest(), "big")
    address = struct.pack("!I", (10 << 24) + 1 + number // 40000)
    port = 20000 + number % 40000
    for packet in session:
        frame = bytearray(packet.frame)
        l4 = packet.l4
        if packet.client_is_source:
            frame[26:30] = address
            struct.pack_into("!H", frame, l4, port)
        else:
            frame[30:34] = address
            struct.pack_into("!H", frame, l4 + 2, port)
        struct.pack_into("!H", frame, 24, 0)
        struct.pack_into("!H", frame, 24, _ip_checksum(bytes(frame[14:l4])))
        if frame[23] == 17:
            struct.pack_into("!H", frame, l4 + 6, 0)  # no UDP checksum (IPv4 allows it)
        for at, _sender, opened in packet.packets:
            if opened is None:
                continue
            plain, replay_packet_id, net_time, wkc, wrapper = opened
            plain = _with_session_ids(plain, mask)
            if isinstance(wrapper, NoWrapping):
                wire = plain
            elif wkc:
                wire = wrapper.wrap(plain, replay_packet_id, net_time + whole, wkc)
            else:
                wire = wrapper.wrap(plain, replay_packet_id, net_time + whole)
            frame[at:at + len(wire)] = wire  # (the same length: nothing else moves)
        yield packet.time + shift, bytes(frame)


def build(path, sessions=24000):
    """Write the capture of ``sessions`` sessions to ``path``; returns (frames, sessions)."""
    seeds = seed_sessions()
    first = min(session[0].time for session in seeds)
    copies = (copy_of(seeds[number % len(seeds)], number, first + number / RATE) for number in range(sessions))
    frames = 0
    with open(path, "wb") as out:
        out.write(PCAP_HEADER)
        for time, frame in _merge_started(copies):
            micros = int(round(time * 1e6))
            out.write(RECORD.pack(micros // 1000000, micros % 1000000, len(frame), len(frame)))
            out.write(frame)
            frames += 1
    return frames, sessions


def _merge_started(copies):
    """Merge the copies' frames by time. Each copy starts later than the one before, so a
    copy is taken in only when its start comes up and the heap holds only running ones."""
    heap, sequence = [], 0
    for copy in copies:
        first = next(copy)
        while heap and heap[0][0] <= first[0]:
            yield _pop_next(heap)
        heapq.heappush(heap, (first[0], sequence, first[1], copy))
        sequence += 1
    while heap:
        yield _pop_next(heap)


def _pop_next(heap):
    time, sequence, frame, copy = heap[0]
    following = next(copy, None)
    if following is None:
        heapq.heappop(heap)
    else:
        heapq.heapreplace(heap, (following[0], sequence, following[1], copy))
    return time, frame


def cached(sessions=24000):
    """The capture of ``sessions`` sessions, built once into the cache folder."""
    made_of = hashlib.sha256(SEED.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:12]
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ovpndiag-bench"
    path = folder / f"sessions-{sessions}-{made_of}.pcap"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        build(partial, sessions)
        partial.rename(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=24000)
    parser.add_argument("--out", help="write here instead of the cache folder")
    args = parser.parse_args()
    if args.out:
        build(args.out, args.sessions)
        path = Path(args.out)
    else:
        path = cached(args.sessions)
    print(f"{path}: {args.sessions} sessions, {path.stat().st_size / 1e6:.0f} MB; "
          f"server ports {' '.join(map(str, ports()))}")


if __name__ == "__main__":
    main()
