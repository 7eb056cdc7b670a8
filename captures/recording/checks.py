"""What a scenario's capture must show before it is kept (a list of problems; none: keep)."""

from __future__ import annotations

from pathlib import Path

from .pcapfile import parse_capture, read_pcap
from .scenario import Scenario


def check_capture(path: Path, sc: Scenario) -> list[str]:
    """Minimal wire-level expectations for a scenario. Returns a list of problems."""
    pkts, info = parse_capture(path, sc)
    problems = []
    if sc.kind == "no-server":
        return check_port_closed(path, pkts, sc)
    if not pkts:
        return ["no OpenVPN packets captured"]
    if info["linktypes"] != {sc.linktype}:
        problems.append(f"link types {sorted(info['linktypes'])}, expected {sc.linktype}")
    expected_vlans = {tuple(vid for _tpid, vid in sc.vlan)} if sc.vlan else set()
    if info["vlans"] != expected_vlans:
        problems.append(f"VLAN tags {sorted(info['vlans'])}, expected {sorted(expected_vlans)}")
    if sc.expect_fragments:
        # IPv4 at MTU 576 fragments control packets (opcode 4) too; IPv6 at 1280 only data (9).
        wanted = {4, 9} if sc.family == 4 else {9}
        if not info["fragments"] or not wanted <= info["reassembled_opcodes"]:
            problems.append(f"{info['fragments']} fragments, reassembled opcodes "
                            f"{sorted(info['reassembled_opcodes'])}, expected {sorted(wanted)}")
    elif info["fragments"]:
        problems.append(f"{info['fragments']} unexpected IP fragments")
    if sc.min_packets and len(pkts) <= sc.min_packets:
        problems.append(f"{len(pkts)} OpenVPN packets, expected more than {sc.min_packets}")
    if sc.kind == "static-key":
        return problems + check_static_key(pkts)
    if sc.kind == "busy":
        from .busy import check_busy

        return problems + check_busy(path, sc)
    ops = [(d, p[0] >> 3, p[0] & 7) for d, p in pkts]
    if sc.kind == "probe":
        return problems + check_probe(pkts, ops, info["client_ports"])
    if sc.capture_start == "mid-session":
        problems += check_mid_session(ops, sc)
    else:
        problems += check_from_handshake(ops, sc)
    if sc.renegotiation:
        if not any(op == 3 and kid == 1 for _, op, kid in ops):
            problems.append("no P_CONTROL_SOFT_RESET_V1 with key_id 1")
        if not any(op == 9 and kid == 1 for _, op, kid in ops):
            problems.append("no P_DATA_V2 with key_id 1")
    elif any(kid != 0 for _, _, kid in ops):
        problems.append("unexpected key_id != 0")
    if sc.float_client:
        problems += check_float(pkts, ops, info["client_ports"])
    return problems


def check_from_handshake(ops: list[tuple[str, int, int]], sc: Scenario) -> list[str]:
    """A capture started before the server: it opens with the client's reset."""
    problems = []
    first_op = 10 if sc.wrapping == "tls-crypt-v2" else 7
    if ops[0][:2] != ("c2s", first_op):
        problems.append(f"first packet is {ops[0]}, expected client opcode {first_op}")
    server_reset = any(d == "s2c" and op == 8 for d, op, _ in ops)
    has_data = any(op == 9 for _, op, _ in ops)
    if sc.outcome == "connected":
        if len(ops) < 2 or ops[1][:2] != ("s2c", 8):
            problems.append(f"second packet is {ops[1] if len(ops) > 1 else None}, expected server opcode 8")
        for op in (4, 5, 9):
            if not any(o == op for _, o, _ in ops):
                problems.append(f"no opcode {op} packet")
    else:
        if has_data:
            problems.append("data packets in a failed handshake")
        answers = sc.client_cert != "client" or sc.server_answers
        if not answers and server_reset:
            problems.append("server answered although the client's wrapping is wrong")
        if answers and not server_reset:
            problems.append("server never answered (TLS should start and then fail)")
    return problems


def check_mid_session(ops: list[tuple[str, int, int]], sc: Scenario) -> list[str]:
    """A capture started on a running tunnel: no hard reset at all, data in both
    directions from the start; a renegotiation only after key_id 0 data."""
    problems = []
    resets = [o for o in ops if o[1] in (7, 8, 10)]
    if resets:
        problems.append(f"{len(resets)} hard resets in a capture started mid-session")
    for direction in ("c2s", "s2c"):
        if not any(d == direction and op == 9 and kid == 0 for d, op, kid in ops):
            problems.append(f"no key_id 0 P_DATA_V2 {direction}")
    if sc.renegotiation:
        soft = next((i for i, o in enumerate(ops) if o[1:] == (3, 1)), None)
        data0 = next((i for i, o in enumerate(ops) if o[1:] == (9, 0)), None)
        if soft is not None and (data0 is None or data0 > soft):
            problems.append("no key_id 0 data before the renegotiation")
    elif {op for _, op, _ in ops} != {9}:
        problems.append(f"opcodes {sorted({op for _, op, _ in ops})}, expected only P_DATA_V2")
    return problems


def check_float(pkts: list[tuple[str, bytes]], ops, client_ports: list[int]) -> list[str]:
    """The client's packets come from two ports, one after the other, with the same
    peer-id and no new reset from the second port; the server answers there too."""
    problems = []
    runs = [port for i, port in enumerate(client_ports) if pkts[i][0] == "c2s"
            and (i == 0 or port != client_ports[i - 1])]
    if len(set(runs)) != 2 or len(runs) != 2:
        return [f"client ports in runs {runs}, expected one port and then another"]
    old, new = runs
    peer_ids = {port: {pkt[1:4] for (d, pkt), p, (_, op, _) in zip(pkts, client_ports, ops)
                       if d == "c2s" and op == 9 and p == port} for port in runs}
    if len(peer_ids[old]) != 1 or peer_ids[old] != peer_ids[new]:
        problems.append(f"P_DATA_V2 peer-ids {peer_ids}, expected one peer-id from both ports")
    if any(port == new and op in (7, 8) for port, (_, op, _) in zip(client_ports, ops)):
        problems.append("a new reset after the float: a new session, not a float")
    if not any(d == "s2c" and port == new and op == 9 for port, (d, op, _) in zip(client_ports, ops)):
        problems.append("the server never sent data to the new port")
    return problems


def check_probe(pkts: list[tuple[str, bytes]], ops, client_ports: list[int]) -> list[str]:
    """A --try-keys run: many client resets (different sessions and HMAC sizes) from
    one socket, and server resets answering some of them."""
    problems = []
    client = [pkt for d, pkt in pkts if d == "c2s"]
    if {op for d, op, _ in ops if d == "c2s"} != {7}:
        problems.append(f"client opcodes {sorted({op for d, op, _ in ops if d == 'c2s'})}, expected resets only")
    if len(set(client_ports)) != 1:
        problems.append(f"client ports {sorted(set(client_ports))}, expected one socket")
    if len({pkt[1:9] for pkt in client}) < 10:
        problems.append(f"{len({pkt[1:9] for pkt in client})} client session ids, expected a dozen or more")
    if len({len(pkt) for pkt in client}) < 3:
        problems.append(f"client reset sizes {sorted({len(pkt) for pkt in client})}, expected several")
    answers = [pkt for d, pkt in pkts if d == "s2c"]
    if not answers or {pkt[0] >> 3 for pkt in answers} != {8}:
        problems.append(f"server opcodes {sorted({pkt[0] >> 3 for pkt in answers})}, expected resets")
    return problems


def check_static_key(pkts: list[tuple[str, bytes]]) -> list[str]:
    """Static-key data: HMAC-SHA1 (20) | IV (16) | AES-CBC blocks - no opcode, no TLS."""
    problems = []
    if {d for d, _ in pkts} != {"c2s", "s2c"}:
        problems.append("static-key packets not in both directions")
    odd = [len(pkt) for _, pkt in pkts if len(pkt) < 20 + 16 + 16 or (len(pkt) - 36) % 16]
    if odd:
        problems.append(f"packet sizes {odd[:5]} do not fit HMAC-SHA1 | IV | AES-CBC")
    if len(pkts) < 6:
        problems.append(f"only {len(pkts)} static-key packets")
    return problems


def check_port_closed(path: Path, pkts: list[tuple[str, bytes]], sc: Scenario) -> list[str]:
    """Nothing listens: client resets only, each answered by an ICMP port unreachable
    (IPv4 on Ethernet-framed lo: type 3, code 3 at the IP payload's start); over TCP,
    SYNs to the port answered by RST only, and no payload at all."""
    if sc.transport == "tcp":
        return check_refused(path, pkts, sc)
    problems = []
    if not pkts or {(d, p[0] >> 3) for d, p in pkts} != {("c2s", 7)}:
        problems.append(f"packets {sorted({(d, p[0] >> 3) for d, p in pkts})}, expected client resets only")
    unreachable = 0
    for _ts, _linktype, frame in read_pcap(path):
        ip = frame[14:]
        if frame[12:14] == b"\x08\x00" and ip[9] == 1 and ip[(ip[0] & 15) * 4:][:2] == b"\x03\x03":
            unreachable += 1
    if not unreachable:
        problems.append("no ICMP port unreachable in the capture")
    return problems


def check_refused(path: Path, pkts: list[tuple[str, bytes]], sc: Scenario) -> list[str]:
    """TCP to a closed port (IPv4 on Ethernet-framed lo): SYNs to it, RSTs from it, nothing else."""
    flags = {"syn": 0, "rst": 0, "other": 0}
    for _ts, _linktype, frame in read_pcap(path):
        ip = frame[14:]
        if frame[12:14] != b"\x08\x00" or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 15) * 4:]
        sport, dport, bits = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big"), tcp[13]
        if dport == sc.port and bits & 0x3F == 0x02:
            flags["syn"] += 1
        elif sport == sc.port and bits & 0x04:
            flags["rst"] += 1
        else:
            flags["other"] += 1
    problems = []
    if pkts:
        problems.append(f"{len(pkts)} OpenVPN packets, expected none")
    if not flags["syn"] or not flags["rst"] or flags["other"]:
        problems.append(f"TCP segments {flags}, expected SYNs to port {sc.port} and RSTs from it only")
    return problems
