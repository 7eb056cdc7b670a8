"""Captures as users make them, built from real captured bytes: started in the middle
of a session, followed by long data streams, with stray packets, mangled, TCP streams
picked up in the middle of a frame. Every packet is shown, in frame order, nothing
waits for ever, and workers print what one process prints."""

import json
import random
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from capture_files import pcap, real_records
from captures import ALL_CAPTURES, CAPTURES, mangled_packet
from ovpndiag.capture.datagrams import read_transport
from ovpndiag.cli import main
from ovpndiag.dissect import reader as reader_module
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.dissect.recognise import OPENVPN, OTHER, STATIC, Recognition


def run_dissect(path, *args):
    result = CliRunner().invoke(main, ["dissect", str(path), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def frames_shown(result):
    return [int(line.split()[0]) for line in result.output.splitlines() if line[:6].strip().isdigit()]


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_bytes(pcap(records))
    return path


def later(record, seconds):
    """The same frame, ``seconds`` later."""
    sec, usec, frame = record
    total = sec * 1000000 + usec + round(seconds * 1000000)
    return total // 1000000, total % 1000000, frame


# --- a session seen from its middle --------------------------------------------------------

RENEG = real_records("udp-reneg.pcap")  # a tls-auth session renegotiated under dynamic tls-crypt
MID = RENEG[15:37]  # editcap -r udp-reneg.pcap mid.pcap 16-37: data, then the whole renegotiation


@pytest.mark.parametrize("ports", [[], ["-p", "1194"]], ids=["port 1194", "-p"])
def test_a_session_cut_before_its_renegotiation_is_shown_whole(tmp_path, ports):
    path = write(tmp_path, "mid.pcap", MID)
    result = run_dissect(path, *ports)
    assert result.exit_code == 0
    assert frames_shown(result) == list(range(1, 23))
    renegotiation = [line for line in result.output.splitlines() if "kid=1 sid=" in line]
    whole = [line for line in run_dissect(CAPTURES / "udp-reneg.pcap").output.splitlines() if "kid=1 sid=" in line]
    assert len(renegotiation) == len(whole) == 13
    assert all(line.endswith("tls-crypt") for line in renegotiation)  # its header, without the TLS secrets


def test_followed_by_twenty_thousand_data_packets_it_neither_crashes_nor_loses_any(tmp_path):
    data = [record for record in MID[-4:]]  # the last data packets, both ways
    tail = [later(data[n % 4], 0.001 * (n + 1) + 1) for n in range(20000)]
    path = write(tmp_path, "long.pcap", MID + tail)
    result = run_dissect(path)
    assert result.exit_code == 0, result.output[-300:]
    assert frames_shown(result) == list(range(1, 22 + 20000 + 1))


def _other_client_port(frame, port=40000):
    """The frame as sent from (or to) another client port (the UDP checksum zeroed: not checked)."""
    frame = bytearray(frame)
    sport, dport = struct.unpack_from("!HH", frame, 34)
    struct.pack_into("!HHxxH", frame, 34, port if sport != 1194 else sport, port if dport != 1194 else dport, 0)
    return bytes(frame)


def test_a_stray_renegotiation_ack_before_a_whole_session_empties_nothing(tmp_path):
    """The last packet of an earlier session from another port, then a whole session."""
    stray = RENEG[25]  # P_ACK_V1 key id 1, under dynamic tls-crypt
    assert stray[2][42] >> 3 == 5 and stray[2][42] & 7 == 1  # (Ethernet, IPv4, UDP: the first byte at 42)
    path = write(tmp_path, "stray.pcap", [later(RENEG[0], -0.5)[:2] + (_other_client_port(stray[2]),)] + RENEG)
    result = run_dissect(path)
    assert result.exit_code == 0
    assert frames_shown(result) == list(range(1, len(RENEG) + 2))
    whole = run_dissect(CAPTURES / "udp-reneg.pcap").output.splitlines()
    # The session itself reads exactly as it does without the stray packet (frames shifted by one).
    assert [line.split(None, 2)[2] for line in result.output.splitlines()[1:]] == \
           [line.split(None, 2)[2] for line in whole]


def test_times_count_from_the_first_frame_as_tsharks_do():
    for name in ("udp-vlan.pcap", "udp-midsession-reneg.pcap", "udp-reneg.pcap"):
        path = CAPTURES / name
        tshark = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number",
                                 "-e", "frame.time_relative"], capture_output=True, text=True, check=True).stdout
        relative = {int(n): float(t) for n, t in (line.split("\t") for line in tshark.splitlines())}
        lines = run_dissect(path).output.splitlines()
        assert lines and relative[1] == 0.0
        for line in lines:
            number, seconds = line.split()[:2]
            assert abs(float(seconds) - relative[int(number)]) < 2e-6, (name, line)
        assert any(float(line.split()[1]) > 0 for line in lines[:1]) == (name == "udp-vlan.pcap")  # ARP first


# --- nothing waits for ever ----------------------------------------------------------------

def test_a_flow_that_cannot_be_decided_holds_no_other_flow_back():
    """A lone undecided packet waits at most HOLD_TIME of capture time; the queue never
    holds more than what came in that time, and never raises."""
    options = Options(ports=(), sessions=False)
    reader = Reader(options)
    datagrams = list(read_transport(str(CAPTURES / "udp-reneg.pcap")))
    lone = datagrams[25]._replace(sport=40000, dport=40001, frame=1)  # one dynamic tls-crypt ACK, other ports
    out = reader.feed(lone)
    assert out == [] and reader.queue
    shown = []
    for number, datagram in enumerate(datagrams, start=2):
        shown += reader.feed(datagram._replace(frame=number, time=datagram.time + 5))
        if datagram.time + 5 - lone.time > reader_module.HOLD_TIME:
            assert not any(item[0].key[1][1] == 40000 for item in reader.queue)
    shown += reader.finish()
    assert [record.frame for record in shown][1:] == list(range(2, len(datagrams) + 2))


def test_the_queue_limit_decides_instead_of_raising(monkeypatch):
    monkeypatch.setattr(reader_module, "MAX_QUEUE", 5)
    monkeypatch.setattr(reader_module, "HOLD_TIME", 1e9)
    reader = Reader(Options(sessions=False))
    datagrams = list(read_transport(str(CAPTURES / "udp-reneg.pcap")))
    lone = datagrams[25]._replace(sport=40000, dport=40001)
    shown = reader.feed(lone._replace(frame=0))
    for datagram in datagrams:
        shown += reader.feed(datagram)
        assert len(reader.queue) <= 5
    shown += reader.finish()
    assert len(shown) == len(datagrams) + 1


# --- workers print what one process prints, on mangled captures too --------------------------

def _mangled(tmp_path, name, seed):
    """The capture with a third of its OpenVPN payloads mangled (UDP over Ethernet/IPv4 only)."""
    rng = random.Random(seed)
    records = []
    for sec, usec, frame in real_records(name):
        frame = bytearray(frame)
        if frame[12:14] == b"\x08\x00" and frame[23] == 17 and rng.random() < 0.33:
            header = 14 + (frame[14] & 15) * 4
            payload = mangled_packet(bytes(frame[header + 8:]), rng)
            ip_length = header - 14 + 8 + len(payload)
            frame = frame[:header] + frame[header:header + 4] + struct.pack("!HH", 8 + len(payload), 0) + payload
            frame[16:18] = struct.pack("!H", ip_length)
        records.append((sec, usec, bytes(frame)))
    return write(tmp_path, f"mangled-{seed}-{name}", records)


UDP_ETHERNET = [c["file"] for c in ALL_CAPTURES if c["transport"] == "udp" and c.get("linktype", 1) == 1
                and c.get("format", "pcap") == "pcap" and not c.get("vlan") and not c.get("fragmented")
                and c["family"] == 4 and c["file"].endswith(".pcap")]


@pytest.mark.parametrize("name", ["fail-tls-crypt-wrong-key.pcap", "udp-midsession-reneg.pcap", "udp-reneg.pcap",
                                  "udp-tls-auth-sha512.pcap", "udp-static-key.pcap", "udp-try-keys.pcap"])
def test_workers_print_what_one_process_prints_on_mangled_captures(tmp_path, name):
    assert name in UDP_ETHERNET
    for seed in range(4):
        path = _mangled(tmp_path, name, seed)
        for mode in ([], ["--json"]):
            alone = run_dissect(path, *mode, "-j", "1")
            assert alone.exit_code == 0
            for jobs in ("2", "3"):
                assert run_dissect(path, *mode, "-j", jobs).output == alone.output, (name, seed, jobs, mode)


# --- TCP picked up in the middle of a frame ---------------------------------------------------

def _resegmented(records, size):
    """The capture's TCP streams cut into ``size``-byte segments, whatever their OpenVPN
    frames (sequence numbers kept right), as a slower link or a bigger MSS would cut them."""
    out = []
    for sec, usec, frame in records:
        header = 14 + (frame[14] & 15) * 4
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:
            out.append((sec, usec, frame))
            continue
        offset = header + (frame[header + 12] >> 4) * 4
        payload, seq = frame[offset:], struct.unpack("!I", frame[header + 4:header + 8])[0]
        if not payload:
            out.append((sec, usec, frame))
            continue
        for start in range(0, len(payload), size):
            piece = payload[start:start + size]
            new = bytearray(frame[:offset] + piece)
            new[header + 4:header + 8] = struct.pack("!I", (seq + start) & 0xFFFFFFFF)
            new[16:18] = struct.pack("!H", len(new) - 14)
            out.append((sec, usec, bytes(new)))
    return out


@pytest.mark.parametrize("ports", [[], ["-p", "443"]], ids=["no hint", "-p"])
def test_a_tcp_stream_picked_up_inside_a_frame_resynchronises(tmp_path, ports):
    records = _resegmented(real_records("tcp-tls-crypt.pcap"), 97)
    whole = write(tmp_path, "whole.pcap", records)
    complete = [json.loads(line) for line in run_dissect(whole, "--json", *ports).output.splitlines()]
    assert len(complete) >= 20
    # Start the capture at a segment that begins inside a frame, well into the session.
    def inside_a_frame(frame):  # its payload cannot start an OpenVPN frame (Ethernet, IPv4, TCP: at 66)
        payload = frame[66:]
        return len(payload) > 40 and not (9 <= struct.unpack_from("!H", payload)[0] <= 2048 and payload[2] >> 3 in
                                          (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))

    start = next(n for n, record in enumerate(records) if n > len(records) // 3 and inside_a_frame(record[2]))
    cut = write(tmp_path, "cut.pcap", records[start:])
    shown = [json.loads(line) for line in run_dissect(cut, "--json", *ports).output.splitlines()]
    later_packets = [r for r in complete if r["frame"] > start + 4]  # those whole after the cut, with margin
    assert later_packets
    kept = {(r["src"], r["length"], r.get("session_id"), r.get("replay_packet_id")) for r in shown}
    for record in later_packets:
        assert (record["src"], record["length"], record.get("session_id"), record.get("replay_packet_id")) in kept


# --- recognition, edge cases (hand-made bytes, shaped like the real ones above) -------------------

def test_random_payloads_with_data_opcodes_are_not_openvpn_on_other_ports():
    rng = random.Random(7)
    for _ in range(300):
        recognition = Recognition(known_port=False)
        verdict = None
        for _packet in range(12):
            data = bytes([rng.choice((0x48, 0x30))]) + bytes(rng.randrange(256) for _ in range(60))
            verdict = recognition.observe(rng.choice(("client", "server")), data, 1.7e9)
            if verdict:
                break
        assert verdict in (None, OTHER)


def test_a_real_data_stream_is_recognised_on_any_port_and_static_key_on_openvpns():
    datagrams = [d for d in read_transport(str(CAPTURES / "udp-midsession-reneg.pcap"))]
    data = [d for d in datagrams if d.payload[0] >> 3 == 9]
    recognition = Recognition(known_port=False)
    verdicts = [recognition.observe("client" if d.dport == 1194 else "server", d.payload, d.time) for d in data[:8]]
    assert OPENVPN in verdicts and set(verdicts[:verdicts.index(OPENVPN)]) == {None}
    assert verdicts.index(OPENVPN) >= 2  # a packet-id must have counted up twice
    static = [d for d in read_transport(str(CAPTURES / "udp-static-key.pcap"))]
    recognition = Recognition(known_port=True)
    verdicts = [recognition.observe("client", d.payload, d.time) for d in static]
    assert STATIC in verdicts


def test_module_runs_as_a_script_on_a_cut_capture(tmp_path):
    """The user's way: the installed command on a capture started mid-session."""
    path = write(tmp_path, "mid.pcap", MID)
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "" and len(result.stdout.splitlines()) == 22


@pytest.mark.parametrize("name", ["udp-tls-auth-sha256.pcap", "tcp-tls-crypt.pcap"])
def test_a_capture_clock_that_was_never_set_does_not_hide_the_wrapping(tmp_path, name):
    """A router without NTP captures in 1970: the peers' net times cannot be judged by it."""
    records = real_records(name)
    shift = records[0][0] - 100
    path = write(tmp_path, "1970.pcap", [(sec - shift, usec, frame) for sec, usec, frame in records])
    args = ["-p", str(next(c["port"] for c in ALL_CAPTURES if c["file"] == name))]
    right = [line.split(None, 2)[2] for line in run_dissect(CAPTURES / name, *args).output.splitlines()]
    assert right and [line.split(None, 2)[2] for line in run_dissect(path, *args).output.splitlines()] == right


def test_live_a_lone_packet_is_shown_once_the_clock_moves_on_without_more_traffic():
    """sniff on a quiet interface: a packet that waits to be decided waits for no later packet."""
    reader = Reader(Options(sessions=False))
    lone = [d for d in read_transport(str(CAPTURES / "udp-unanswered-4444.pcap"))][0]
    reader.first_time = lone.time
    shown = reader.feed(lone)
    assert [r.frame for r in shown] == [lone.frame]  # a lone reset is known at once
    ack = list(read_transport(str(CAPTURES / "udp-reneg.pcap")))[25]  # a renegotiation's ACK, alone
    assert reader.feed(ack._replace(sport=50000, dport=50001, time=lone.time + 0.1)) == []
    assert reader.tick(lone.time + 1) == [] and reader.queue
    late = reader.tick(lone.time + 0.1 + reader_module.HOLD_TIME + 0.01)
    assert [(r.frame, r.opcode) for r in late] == [(ack.frame, "P_ACK_V1")] and not reader.queue
    assert reader.tally["undecided"] == 1  # shown, on what little there was
