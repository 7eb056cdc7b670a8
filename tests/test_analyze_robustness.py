"""ovpndiag analyze on captures as users break them: cut short (at frame boundaries and
inside a record), started mid-session, mangled (OpenVPN payloads changed, cut, doubled,
reordered, garbage on the port), with good, wrong and broken keys and key logs, and bad
command lines. It never raises; every verdict is a name of ovpndiag.verdicts; and a
capture that cannot show a session's end makes it ``incomplete``, never a guess.

What a cut may honestly keep, asserted here: a session's verdict on the cut capture is
its verdict on the whole capture or ``incomplete`` - never another failure - and the
verdicts that rest on proof (a key trial, an ICMP port unreachable, a refused TCP
connection, a later session of the same client) survive any cut that keeps their proof.
"""

import io
import json
import random
import re
import struct
import subprocess
import sys

import pytest

from captures import ALL_CAPTURES, CAPTURES, MANIFEST, _ip_packet, cut_capture, entry, openvpn_packets
from ovpndiag import analyze, verdicts
from ovpndiag.analyze.keylog import KeyLogError
from ovpndiag.analyze.run import analyses as capture_analyses
from ovpndiag.protocol import CLIENT_RESETS, DATA_OPCODES
from ovpndiag.render.analysis import VerdictTable, session_json, session_text

# The failure captures, the key log captures (most of them working) and the busy captures.
FAILING = sorted(p.name for pattern in ("fail-*.pcap", "keylog-*.pcap", "busy-mixed*.pcap")
                 for p in CAPTURES.glob(pattern))
# Captures of a session that worked, with data both ways, over UDP, from its start.
WORKING_UDP = sorted(e["file"] for e in MANIFEST if e["file"].startswith("udp") and e["outcome"] == "connected")
KEY_KINDS = {"tls-auth": "tls_auth", "tls-crypt": "tls_crypt", "tls-crypt-v2": "tls_crypt_v2"}
PASSWORD = (CAPTURES / "keys/user-pass.txt").read_text().splitlines()[1].strip()
PROVEN = {"port-closed", "no-tls-auth", "wrong-key", "wrong-key-direction", "wrong-digest"}
STARTS_INSIDE = "the capture starts inside this session"


# --- capture files as bytes ----------------------------------------------------------

def split_pcap(data):
    """(file header, [record bytes]) of a classic pcap file."""
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    records, offset = [], 24
    while offset + 16 <= len(data):
        length = 16 + struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        records.append(data[offset:offset + length])
        offset += length
    return data[:24], records


def first_frames(name, count):
    """The capture's first ``count`` frames: tcpdump stopped (-c) there."""
    header, records = split_pcap((CAPTURES / name).read_bytes())
    return header + b"".join(records[:count])


def server_keys(capture) -> dict:
    """analyze.open's arguments for the capture's server key, digest and direction."""
    if not capture.get("key") or capture["wrapping"] not in KEY_KINDS:  # (static-key: no server key to give)
        return {}
    keys = {KEY_KINDS[capture["wrapping"]]: str(CAPTURES / capture["key"])}
    if capture["wrapping"] == "tls-auth":
        keys["auth"] = capture["auth"]
        if capture.get("server_key_direction") is not None:
            keys["key_direction"] = str(capture["server_key_direction"])
    return keys


def keylog_of(capture) -> dict:
    return {"keylog": str(CAPTURES / capture["keylog"])} if capture.get("keylog") else {}


def analyse(data, port, **options):
    """(analyses, the capture's read error or None) of capture bytes, in this process."""
    source = io.BytesIO(data)
    source.name = "cut.pcap"
    with analyze.open([source], ports=[port], jobs=1, **options) as run:
        capture = next(iter(run))
        found = list(capture_analyses(capture))
        return found, capture.error


def check_shape(found):
    """What every analysis must be, whatever the input: a known verdict and stage,
    strings for evidence and advice, JSON, text - and no key material in any of it."""
    table = VerdictTable()
    for number, analysis in enumerate(found, start=1):
        assert analysis["verdict"] in verdicts.VERDICTS, analysis["verdict"]
        assert analysis["stage_reached"] in ("none",) + verdicts.STAGES, analysis["stage_reached"]
        assert analysis["evidence"] and all(isinstance(line, str) and line.isprintable()
                                            for line in analysis["evidence"]), analysis["evidence"]
        assert all(isinstance(entry[3], str) and entry[3].isprintable() for entry in analysis["timeline"])
        assert analysis["advice"] == list(verdicts.get(analysis["verdict"]).advice)
        shown = json.loads(session_json(analysis))
        assert shown["verdict"] == analysis["verdict"] and shown["evidence"] == analysis["evidence"]
        text = session_text(number, analysis)
        assert f"verdict: {analysis['verdict']} " in text
        table.add(analysis)
        no_secrets(text + session_json(analysis))
    table.text()


def _secrets():
    """Hex lines of the static keys, base64 lines of the tls-crypt-v2 keys, the secrets
    (third words) of every key log, the password: none may ever be printed."""
    pieces = {PASSWORD}
    for path in (CAPTURES / "keys").glob("*.key"):
        if path.name in ("ca.key", "client.key", "server.key", "rogue-ca.key", "rogue-client.key",
                         "server-expired.key"):
            continue  # (private keys of certificates: never read by analyze)
        pieces |= {line.strip() for line in path.read_text().splitlines()
                   if line.strip() and not line.startswith(("#", "-"))}
    for path in CAPTURES.glob("*.keys"):
        pieces |= {line.split()[2] for line in path.read_text().splitlines() if len(line.split()) == 3}
    return pieces


SECRETS = _secrets()


def no_secrets(text):
    lowered = text.lower()
    leaked = [piece for piece in SECRETS if piece in text or piece.lower() in lowered]
    assert not leaked, f"key material printed: {leaked[:2]}"


def whole(name, **options):
    """The analyses of the whole capture (read to its end)."""
    found, error = analyse((CAPTURES / name).read_bytes(), entry(name)["port"], **options)
    assert error is None
    return found


def same_session(analysis, full, shift=0):
    """The analysis of ``full`` that ``analysis`` (of a cut capture whose frames are
    ``shift`` less) is a part of: the one of its session id, else the one holding its
    first frame (a client that reconnects from the same port has sessions side by side)."""
    for candidate in full:
        if analysis["session_id"] is not None and (candidate["client_port"], candidate["session_id"]) == \
                (analysis["client_port"], analysis["session_id"]):
            return candidate
    first = analysis["frames"][0] + shift
    for candidate in full:
        if (candidate["client_port"], candidate["transport"]) == (analysis["client_port"], analysis["transport"]) \
                and candidate["frames"][0] <= first <= candidate["frames"][1]:
            return candidate
    return None


# What a capture started later may honestly call a session instead: a RST whose SYN is
# not in the capture shows a reset connection, not a refused one.
ALSO_HONEST = {("port-closed", "connection-reset")}


def honest(analysis, full, cut_note):
    """A cut keeps a session's verdict or makes it incomplete, never another failure."""
    if analysis["verdict"] == "incomplete":
        return
    assert full is not None, (cut_note, analysis["verdict"], analysis["evidence"])
    if (full["verdict"], analysis["verdict"]) in ALSO_HONEST and analysis["frames"][0] == analysis["frames"][1]:
        return
    assert analysis["verdict"] == full["verdict"], (cut_note, analysis["verdict"], full["verdict"],
                                                    analysis["evidence"])


def cut_points(name, end, start=1, most=60):
    """range(start, end), or ``most`` of them for a big capture (a seeded sample)."""
    points = range(start, end)
    if len(points) <= most:
        return points
    return sorted(random.Random(f"cuts {name}").sample(points, most))


# --- 1. cut captures -----------------------------------------------------------------

@pytest.mark.parametrize("name", FAILING)
def test_a_capture_cut_after_any_frame_keeps_a_verdict_or_says_incomplete(name):
    """tcpdump stopped (-c, Ctrl-C) after any frame, with and without the server's key
    or key log: no exception, known verdicts, and no session called another failure."""
    capture = entry(name)
    keyed = {**server_keys(capture), **keylog_of(capture)}
    cases = [{}] + ([keyed] if keyed else [])
    header, records = split_pcap((CAPTURES / name).read_bytes())
    for options in cases:
        full = whole(name, **options)
        for count in cut_points(name, len(records)):
            found, error = analyse(header + b"".join(records[:count]), capture["port"], **options)
            assert error is None
            check_shape(found)
            for analysis in found:
                honest(analysis, same_session(analysis, full), (name, count, options))


@pytest.mark.parametrize("name", FAILING)
def test_a_capture_cut_inside_a_record_is_an_error_and_what_precedes_is_analysed(name):
    """A file cut inside a record (a full disk, a copy interrupted): one line of error
    naming the frame, and the analyses of the frames before it, as if cut there."""
    capture = entry(name)
    data = (CAPTURES / name).read_bytes()
    header, records = split_pcap(data)
    full = whole(name)
    rng = random.Random(f"cut-inside {name}")
    ends = [24 + sum(map(len, records[:count])) for count in range(len(records) + 1)]
    for count in sorted(rng.sample(range(len(records)), min(6, len(records)))):
        cut = ends[count] + rng.randrange(1, len(records[count]))  # (inside record count+1)
        found, error = analyse(data[:cut], capture["port"])
        assert error is not None and f"frame {count + 1}:" in error and "\n" not in error, error
        check_shape(found)
        assert found == analyse(data[:ends[count]], capture["port"])[0]  # (the frames before the damage)
        for analysis in found:
            honest(analysis, same_session(analysis, full), (name, cut))


def test_the_session_cut_right_after_the_clients_first_reset_is_incomplete():
    """Any failure cut after its first frame (the client's reset or SYN, nothing else):
    the capture ends within a second of it - whatever the server would have done is not
    in it. Only a key trial, which needs no answer, may still name a cause."""
    for name in FAILING:
        capture = entry(name)
        found, _ = analyse(first_frames(name, 1), capture["port"])
        assert [analysis["verdict"] for analysis in found] in ([], ["incomplete"]), (name, found)
        for analysis in found:
            assert "it may go on past the capture" in analysis["evidence"][-1], (name, analysis["evidence"])
        keys = server_keys(capture)
        proven = whole(name, **keys)[0]["verdict"] if keys else None
        if proven in PROVEN:
            keyed, _ = analyse(first_frames(name, 1), capture["port"], **keys)
            assert [analysis["verdict"] for analysis in keyed] == [proven], name


def test_the_servers_key_calls_no_cut_working_session_wrong():
    """A working session cut before the server's first answer: its client's packets
    verify under the server's key, so the key trials name no culprit - incomplete."""
    checked = 0
    for capture in ALL_CAPTURES:
        keys = server_keys(capture)
        if capture.get("outcome") != "connected" or not keys or capture["file"].endswith(".pcapng"):
            continue
        full = whole(capture["file"], **keys)
        for count in (1, 2, 3):
            found, _ = analyse(first_frames(capture["file"], count), capture["port"], **keys)
            for analysis in found:
                checked += 1
                honest(analysis, same_session(analysis, full), (capture["file"], count))
                assert analysis["verdict"] not in PROVEN
    assert checked > 40


def test_another_clients_session_is_no_sign_this_one_was_given_up():
    """A session cut mid-handshake (fail-untrusted-cert's first, up to the client's flight),
    then a session from the same address (udp-plain's, another client): begun within a
    restart pause of the first one's last packet, or joined late (its reset not in the
    capture), it says nothing of the first - incomplete; begun a second later, with its
    reset, it is the client's retry - the first was given up, its verdict stands."""
    header, failing = split_pcap((CAPTURES / "fail-untrusted-cert.pcap").read_bytes())
    _, working = split_pcap((CAPTURES / "udp-plain.pcap").read_bytes())
    first = failing[:7]
    start = when(first[-1])
    for later, expected in ((moved(working[:15], start + 0.2), "incomplete"),
                            (moved(working[2:15], start + 1.5), "incomplete"),
                            (moved(working[:15], start + 1.5), "client-certificate-rejected")):
        found, _ = analyse(header + b"".join(first + later), 1194)
        assert len(found) == 2 and found[0]["frames"] == [1, 7]
        assert found[0]["verdict"] == expected, (expected, found[0]["evidence"])
        assert found[-1]["verdict"] in ("ok", "incomplete")


def test_proof_survives_the_cut_that_keeps_it():
    """The ICMP port unreachable (or the refusing RST) right after a reset or SYN proves
    port-closed; a key trial proves its verdict from the client's first packet; an earlier
    session given up for a new one keeps its verdict."""
    for name in ("fail-port-closed.pcap", "fail-port-closed-tcp.pcap"):
        found, _ = analyse(first_frames(name, 2), entry(name)["port"])
        assert [analysis["verdict"] for analysis in found] == ["port-closed"], name
    for name in FAILING:
        capture = entry(name)
        keys = server_keys(capture)
        full = whole(name, **keys)
        header, records = split_pcap((CAPTURES / name).read_bytes())
        for count in cut_points(name, len(records)):
            found, _ = analyse(header + b"".join(records[:count]), capture["port"], **keys)
            for analysis in found:
                was = same_session(analysis, full)
                verdict = was and was["verdict"]
                if verdict in PROVEN and analysis["stage_reached"] == "none" and (
                        verdict != "port-closed" or analysis["frames"][1] - analysis["frames"][0] >= 1):
                    assert analysis["verdict"] == verdict, (name, count, analysis["evidence"])
            for earlier in found[:-1]:  # (given up for the next session: its verdict is final)
                if any("began a new session" in line for line in earlier["evidence"]):
                    assert earlier["verdict"] == same_session(earlier, full)["verdict"], (name, count)


# --- 2. captures started mid-session -------------------------------------------------

def _session_packets(name):
    """(frame, sender, opcode, key id) of every OpenVPN packet of a capture."""
    return [(p.frame, p.sender, p.data[0] >> 3, p.data[0] & 7) for p in openvpn_packets(entry(name))]


@pytest.mark.parametrize("name", FAILING + WORKING_UDP)
def test_a_capture_started_mid_session_says_so(name):
    """tcpdump started after any frame: no session called another failure, and one
    whose client resets are all gone says the capture starts inside it."""
    capture = entry(name)
    full = whole(name)
    frames = len(split_pcap((CAPTURES / name).read_bytes())[1])
    packets = _session_packets(name) if capture["transport"] == "udp" else None
    for first in cut_points(name, frames + 1, start=2):
        found, error = analyse(cut_capture(CAPTURES / name, first), capture["port"])
        assert error is None
        check_shape(found)
        for analysis in found:
            was = same_session(analysis, full, first - 1)
            honest(analysis, was, (name, "from frame", first))
            if was is None or was["frames"][0] >= first:
                continue
            # the client's resets that are left, of this session's key id 0
            end = was["frames"][1]
            resets = packets is not None and any(first <= frame <= end and opcode in CLIENT_RESETS and not key_id
                                                 for frame, _sender, opcode, key_id in packets)
            if packets is not None and not resets and analysis["packets"]["client"] + analysis["packets"]["server"]:
                assert any(line.startswith(STARTS_INSIDE) for line in analysis["evidence"]), (name, first, analysis)


@pytest.mark.parametrize("name", WORKING_UDP)
def test_a_working_session_seen_from_its_middle_is_ok_while_data_flows_both_ways(name):
    """Started after the handshake (or inside it): while data packets are left each way, ok."""
    capture = entry(name)
    data = [(frame, sender) for frame, sender, opcode, _key in _session_packets(name) if opcode in DATA_OPCODES]
    checked = 0
    for first in range(2, max(frame for frame, _sender in data) + 1):
        left = {sender for frame, sender in data if frame >= first}
        if left != {"client", "server"}:
            continue
        found, _ = analyse(cut_capture(CAPTURES / name, first), capture["port"])
        assert [analysis["verdict"] for analysis in found] == ["ok"], (name, first, found)
        checked += 1
    assert checked


WORKING = sorted(e["file"] for e in ALL_CAPTURES if e.get("outcome") == "connected" and e["file"].endswith(".pcap")
                 and e["wrapping"] != "static-key" and e["file"] != "udp-midsession-flood.pcap")


@pytest.mark.parametrize("name", FAILING)
def test_any_window_of_a_failure_capture_keeps_its_verdicts_or_says_incomplete(name):
    """Started late and stopped early at once: every single frame (of a small capture)
    and random stretches, with and without the server's key or key log. (A short window
    of the busy capture, where every client comes from 127.0.0.1, can show one client's
    session cut mid-handshake and another's beginning a second later and nothing side by
    side: that is what one client's retry looks like, so there only the shape is checked.)"""
    capture = entry(name)
    header, records = split_pcap((CAPTURES / name).read_bytes())
    rng = random.Random(f"windows {name}")
    windows = [(at, at + 1) for at in range(len(records))] if len(records) <= 100 else []
    for _ in range(30 if len(records) <= 100 else 60):
        first = rng.randrange(len(records))
        windows.append((first, min(len(records), first + rng.choice([2, 5, 10, 30, 100, len(records)]))))
    for options in [{}] + [given for given in (server_keys(capture), keylog_of(capture)) if given]:
        full = whole(name, **options)
        for first, end in windows:
            found, _ = analyse(header + b"".join(records[first:end]), capture["port"], **options)
            check_shape(found)
            for analysis in found if capture.get("group") != "busy" else ():
                honest(analysis, same_session(analysis, full, first), (name, first + 1, end, options))


@pytest.mark.parametrize("name", WORKING)
def test_any_window_of_a_working_capture_is_ok_or_incomplete(name):
    """tcpdump started late and stopped early around a session that worked: whatever
    window of it is left - every single frame, and random stretches - shows no failure,
    without keys, with the server's key, with the key log."""
    capture = entry(name)
    header, records = split_pcap((CAPTURES / name).read_bytes())
    rng = random.Random(f"windows {name}")
    windows = [(at, at + 1) for at in range(len(records))]
    windows += [tuple(sorted(rng.sample(range(len(records) + 1), 2))) for _ in range(20)]
    for options in [{}] + [given for given in (server_keys(capture), keylog_of(capture)) if given]:
        for first, end in windows:
            found, _ = analyse(header + b"".join(records[first:end]), capture["port"], **options)
            check_shape(found)
            assert {analysis["verdict"] for analysis in found} <= {"ok", "incomplete"}, \
                (name, first + 1, end, options, [(a["verdict"], a["evidence"]) for a in found])


def snapped(data, snap):
    """The (little-endian pcap) capture as tcpdump -s SNAP would have written it."""
    header, records = split_pcap(data)
    out = [header[:16] + struct.pack("<I", snap) + header[20:]]
    for record in records:
        kept = min(struct.unpack("<I", record[8:12])[0], snap)
        out.append(record[:8] + struct.pack("<I", kept) + record[12:16 + kept])
    return b"".join(out)


# What a small snap length may honestly make of a session: a key trial needs the whole
# packet (without it, the server's silence is all there is to say), an ICMP error that
# lost its quote cannot be tied to the client.
SNAPPED_ALSO = {(verdict, "server-silent") for verdict in PROVEN} | {("port-closed", "server-silent")}


@pytest.mark.parametrize("name", sorted(e["file"] for e in ALL_CAPTURES if e["file"].endswith(".pcap")
                                        and e["wrapping"] != "static-key"
                                        and e["file"] != "udp-midsession-flood.pcap"))
def test_a_small_snap_length_is_never_read_as_a_failure(name):
    """tcpdump -s 60/96/200/600 (old defaults, appliances): packets cut short are never
    judged by what was cut off - a cut reset fails every HMAC, a cut TLS record is
    garbage - so every session keeps its verdict, says incomplete, or says only what
    survives (with the reason: the snap length)."""
    capture = entry(name)
    data = (CAPTURES / name).read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        return  # (a big-endian file: the tests' rewriter writes little-endian records only)
    for options in [{}] + [given for given in (server_keys(capture), keylog_of(capture)) if given]:
        full = whole(name, **options)
        for snap in (60, 96, 200, 600):
            found, error = analyse(snapped(data, snap), capture["port"], **options)
            assert error is None
            check_shape(found)
            for analysis in found:
                was = same_session(analysis, full)
                if was is not None and (was["verdict"], analysis["verdict"]) in SNAPPED_ALSO:
                    continue
                honest(analysis, was, (name, snap, options))


@pytest.mark.parametrize("name", FAILING + WORKING)
def test_a_capture_that_saw_every_packet_twice_reads_as_once(name):
    """A mirror port or tcpdump -i any on a bridge writes each packet twice, microseconds
    apart: a copy is no retransmission (a resent reset or SYN would end a session the
    capture cut), so the whole capture and its cuts are judged as the original's."""
    capture = entry(name)
    header, records = split_pcap((CAPTURES / name).read_bytes())
    doubled = [record for record in records for _copy in (1, 2)]
    for options in [{}] + [given for given in (server_keys(capture), keylog_of(capture)) if given]:
        full = whole(name, **options)
        for count in list(cut_points(name, len(doubled), start=2, most=30)) + [len(doubled)]:
            found, _ = analyse(header + b"".join(doubled[:count]), capture["port"], **options)
            check_shape(found)
            for analysis in found:
                twins = [candidate for candidate in full if candidate["client_port"] == analysis["client_port"]
                         and analysis["session_id"] in (None, candidate["session_id"])]
                was = twins[0] if len(twins) == 1 else same_session(analysis, full)
                if count == len(doubled):
                    assert was is not None and analysis["verdict"] == was["verdict"], (name, analysis["evidence"])
                else:
                    honest(analysis, was, (name, "doubled", count, options))


@pytest.mark.parametrize("name", FAILING)
def test_a_clock_stepped_back_is_no_evidence(name):
    """Timestamps that run backwards (the capture's clock stepped back, every frame
    here): a session later in time but earlier in the capture is not the client's
    retry, and time since a session is no proof it is over - no verdict but the
    whole capture's, or incomplete."""
    capture = entry(name)
    data = (CAPTURES / name).read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        return  # (a big-endian file: the tests' rewriter writes little-endian records only)
    header, records = split_pcap(data)
    start = when(records[0])
    backwards = [struct.pack("<I", int(2 * start - when(record))) + record[4:] for record in records]
    for options in [{}] + [given for given in (server_keys(capture), keylog_of(capture)) if given]:
        full = whole(name, **options)
        found, _ = analyse(header + b"".join(backwards), capture["port"], **options)
        check_shape(found)
        for analysis in found:
            honest(analysis, same_session(analysis, full), (name, "backwards", options))


@pytest.mark.parametrize("name, dropped, first_verdict", [
    ("fail-untrusted-cert.pcap", 4, "incomplete"),         # the server's ServerHello packet (the client acked it)
    ("fail-tls-version-mismatch.pcap", 2, "incomplete"),   # the server's reset (acked in the ClientHello)
    ("keylog-tcp-tls13.pcap", 25, "incomplete"),           # a client data segment (the TCP stream skips bytes)
    ("fail-untrusted-cert-tcp.pcap", 12, "incomplete"),    # the client's flight, just before the FINs
    ("fail-expired-server-cert.pcap", 20, "server-certificate-rejected"),  # another session's packet: no matter
])
def test_a_frame_the_capture_dropped_is_no_silence(name, dropped, first_verdict):
    """A capture that lost a frame (the kernel's 'packets dropped'): when the capture
    itself shows the loss - a later packet-id, an acknowledgement of a packet it never
    had, TCP bytes skipped - nobody is said to have stopped answering."""
    header, records = split_pcap((CAPTURES / name).read_bytes())
    if first_verdict == "incomplete":
        assert whole(name)[0]["verdict"] != "incomplete"  # (the whole capture names a failure: the drop hides it)
    found, _ = analyse(header + b"".join(records[:dropped - 1] + records[dropped:]), entry(name)["port"])
    check_shape(found)
    assert found[0]["verdict"] == first_verdict, found[0]["evidence"]
    if first_verdict == "incomplete":
        assert any("missed" in line or "dropped" in line for line in found[0]["evidence"]), found[0]["evidence"]


# --- 3. fuzzed captures ---------------------------------------------------------------

def _locate(linktype, frame):
    """(IP offset, IP version, transport offset, protocol, payload offset) of a frame's
    unfragmented UDP/TCP packet, or None."""
    try:
        ip = _ip_packet(linktype, frame[16:])
    except ValueError:
        return None
    if ip is None or len(ip) < 40:
        return None
    at = len(frame) - len(ip)
    if ip[0] >> 4 == 4:
        if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:
            return None
        l4, protocol = at + (ip[0] & 0x0F) * 4, ip[9]
        version = 4
    else:
        l4, protocol, version = at + 40, ip[6], 6
    if protocol == 17:
        return at, version, l4, 17, l4 + 8
    if protocol == 6:
        return at, version, l4, 6, l4 + (frame[l4 + 12] >> 4) * 4
    return None


def _with_payload(record, spot, payload):
    """The record with its UDP/TCP payload replaced (lengths put right, checksums left)."""
    ip, version, l4, protocol, start = spot
    frame = bytearray(record[:start] + payload)
    ip_length = len(frame) - ip
    if version == 4:
        frame[ip + 2:ip + 4] = struct.pack("!H", ip_length)
    else:
        frame[ip + 4:ip + 6] = struct.pack("!H", ip_length - 40)
    if protocol == 17:
        frame[l4 + 4:l4 + 6] = struct.pack("!H", len(frame) - l4)
    frame[8:16] = struct.pack("<II", len(frame) - 16, len(frame) - 16)
    return bytes(frame)


def mangled(data, port, rng):
    """The capture with 1-3 of: bytes changed inside OpenVPN payloads, a UDP payload cut
    short, a frame doubled, two frames swapped, a garbage datagram sent to the port."""
    header, records = split_pcap(data)
    records = list(records)
    linktype = struct.unpack("<I", header[20:24])[0]
    for _ in range(rng.randint(1, 3)):
        spots = [(at, _locate(linktype, record)) for at, record in enumerate(records)]
        spots = [(at, spot) for at, spot in spots if spot and len(records[at]) > spot[4]]
        kind = rng.randrange(5)
        if kind == 0 and spots:  # bytes changed inside an OpenVPN payload
            at, spot = rng.choice(spots)
            frame = bytearray(records[at])
            for _ in range(rng.randint(1, 4)):
                frame[rng.randrange(spot[4], len(frame))] ^= 1 << rng.randrange(8)
            records[at] = bytes(frame)
        elif kind == 1 and spots:  # a UDP payload cut short (a TCP one: its bytes end early)
            at, spot = rng.choice(spots)
            payload = records[at][spot[4]:]
            records[at] = _with_payload(records[at], spot, payload[:rng.randrange(len(payload))])
        elif kind == 2 and records:  # a frame doubled, now or later
            at = rng.randrange(len(records))
            records.insert(rng.randrange(at, len(records) + 1), records[at])
        elif kind == 3 and len(records) > 1:  # two frames swapped
            at = rng.randrange(len(records) - 1)
            other = min(len(records) - 1, at + rng.randint(1, 3))
            records[at], records[other] = records[other], records[at]
        elif spots:  # garbage to (or from) the port, in a real frame's headers
            at, spot = rng.choice([(at, spot) for at, spot in spots if spot[3] == 17] or spots)
            garbage = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 9, 14, 40, rng.randrange(1200)])))
            if rng.random() < 0.5 and garbage:
                garbage = bytes([rng.choice([0x38, 0x40, 0x20, 0x48, 0x50, 0x28])]) + garbage[1:]  # (an opcode)
            records.insert(rng.randrange(len(records) + 1), _with_payload(records[at], spot, garbage))
    return header + b"".join(records)


def _fuzz_cases():
    """(capture, options) pairs: each capture without keys, with its server's key, and
    each key log capture with its key log, another session's, a cut one and garbage."""
    cases = []
    for name in FAILING + WORKING_UDP + ["tcp-tls-auth.pcap", "tcp-plain.pcap", "udp-float.pcap"]:
        capture = entry(name)
        if name.endswith(".pcapng"):
            continue
        cases.append((name, {}))
        if server_keys(capture):
            cases.append((name, server_keys(capture)))
        if capture.get("keylog"):
            cases.append((name, keylog_of(capture)))
    return cases


def _keylog_variants(tmp_path, rng):
    """Key logs as users get them wrong: another session's, cut short, garbage, empty."""
    logs = sorted(CAPTURES.glob("*.keys"))
    text = logs[0].read_bytes()
    variants = {"other": str(logs[1]), "cut": tmp_path / "cut.keys", "garbage": tmp_path / "garbage.keys",
                "cut-line": tmp_path / "cut-line.keys"}
    variants["cut"].write_bytes(text[:rng.randrange(len(text) // 2, len(text))])
    variants["cut-line"].write_bytes(text[:text.index(b"\n") // 2])
    variants["garbage"].write_bytes(bytes(rng.randrange(256) for _ in range(3000)))
    return {name: str(path) for name, path in variants.items()}


def test_mangled_captures_are_analysed_without_an_exception(tmp_path):
    rng = random.Random(20261128)
    cases = _fuzz_cases()
    wrong_logs = _keylog_variants(tmp_path, rng)
    raw = {name: (CAPTURES / name).read_bytes() for name, _options in cases}
    seen, refused = set(), 0
    for variant in range(400):
        name, options = cases[variant % len(cases)]
        options = dict(options)
        if "keylog" in options and variant % 3 == 0:
            options["keylog"] = wrong_logs[rng.choice(sorted(wrong_logs))]
        data = mangled(raw[name], entry(name)["port"], rng)
        try:
            found, _error = analyse(data, entry(name)["port"], **options)
        except KeyLogError as error:  # (a key log with no line of secrets: refused at open, in one line)
            assert "\n" not in str(error) and options["keylog"] in str(error)
            refused += 1
            continue
        check_shape(found)
        seen |= {analysis["verdict"] for analysis in found}
    # the variants reached far: failures, successes and cut sessions all came out
    assert {"ok", "incomplete", "server-silent", "client-certificate-rejected"} <= seen, seen
    assert len(seen) >= 8 and refused, (seen, refused)


def test_garbage_on_the_port_is_never_a_confident_failure():
    """Random datagrams to UDP 1194 among no OpenVPN (most led by an opcode's byte): no
    handshake is there, so nothing is called a certificate, TLS or key failure (data
    packets cannot be told from random bytes without keys: ok and data-one-way may be)."""
    rng = random.Random(1194)
    header, records = split_pcap((CAPTURES / "udp-plain.pcap").read_bytes())
    spot = _locate(1, records[0])
    sessions = 0
    for variant in range(60):
        frames = []
        for _ in range(rng.randint(1, 12)):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            if rng.random() < 0.7:  # (a reset, control, ACK or data opcode, key id 0)
                garbage = bytes([rng.choice([0x38, 0x40, 0x20, 0x28, 0x48, 0x50, 0x30])]) + garbage[1:]
            frames.append(_with_payload(records[rng.randrange(2)], spot, garbage))  # (both directions)
        found, _ = analyse(header + b"".join(frames), 1194)
        check_shape(found)
        sessions += len(found)
        assert {analysis["verdict"] for analysis in found} <= {"incomplete", "server-silent", "data-one-way", "ok"}, \
            (variant, [(a["verdict"], a["evidence"]) for a in found])
    assert sessions > 40


def test_control_characters_in_a_certificate_are_never_written_raw(tmp_path):
    """A certificate is what a peer says it is: a subject with a newline and a fake
    verdict, or a terminal escape, in fail-expired-server-cert's certificates (the same
    length replaced: the DER stays whole). The evidence still names the certificate,
    escaped; no line is forged, no escape reaches the terminal."""
    data = (CAPTURES / "fail-expired-server-cert.pcap").read_bytes()
    name, material = b"ovpndiag-test-server", b"ovpndiag test material"
    forged = data
    for real, fake in ((material, b"ovp\nverdict: ok\x1b[2J"), (name, b"ovp\x1b[1mowned\x07")):
        forged = forged.replace(real, fake + real[len(fake):])
    assert len(forged) == len(data) and forged != data
    path = tmp_path / "forged.pcap"
    path.write_bytes(forged)
    found, _ = analyse(path.read_bytes(), 1194)
    check_shape(found)
    cited = [line for analysis in found for line in analysis["evidence"] if "expired on" in line]
    assert cited and all("\\nverdict: ok\\x1b[2J" in line and "\\x1b[1mowned\\x07" in line for line in cited), cited
    for arguments in ([], ["--json"]):
        result = cli(str(path), *arguments)
        assert result.returncode == 0 and "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert not any(line.startswith("verdict: ok") for line in result.stdout.splitlines())


def test_a_wild_packet_id_costs_nothing(tmp_path):
    """A damaged packet's message packet-id may be anything (2**32 - 1 here, in the
    server's second flight packet of fail-untrusted-cert): telling a dropped packet from
    it must not walk the ids between (run under a 1 GiB address-space limit)."""
    import resource

    header, records = split_pcap((CAPTURES / "fail-untrusted-cert.pcap").read_bytes())
    spot = _locate(1, records[4])
    packet = bytearray(records[4][spot[4]:])
    assert packet[0] >> 3 == 4 and packet[9]  # (P_CONTROL_V1 of the server, with ACKs)
    at = 10 + 4 * packet[9] + 8
    packet[at:at + 4] = b"\xff\xff\xff\xff"
    path = tmp_path / "wild.pcap"
    path.write_bytes(header + b"".join(records[:4]) + _with_payload(records[4], spot, bytes(packet))
                     + b"".join(records[5:]))
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # noqa: E731
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "--json", str(path)], capture_output=True,
                            text=True, timeout=60, preexec_fn=limit)
    assert result.returncode == 0 and not result.stderr, result.stderr[-500:]
    first = json.loads(result.stdout.splitlines()[0])
    assert first["verdict"] == "incomplete" and any("missed" in line for line in first["evidence"]), first


def test_mangled_captures_through_the_command_line(tmp_path):
    """A few mangled files through the CLI, --json and text: JSON lines that parse, a
    known verdict each, no traceback."""
    rng = random.Random(7)
    for variant, name in enumerate(["fail-untrusted-cert-tcp.pcap", "keylog-auth-token.pcap",
                                    "fail-tls-auth-wrong-key.pcap", "udp-tls-crypt.pcap"]):
        capture = entry(name)
        path = tmp_path / f"mangled-{variant}.pcap"
        path.write_bytes(mangled((CAPTURES / name).read_bytes(), capture["port"], rng))
        extra = [f"--{key.replace('_', '-')}={value}" for key, value in {**server_keys(capture),
                                                                         **keylog_of(capture)}.items()]
        for as_json in (True, False):
            result = cli(str(path), "-p", str(capture["port"]), *extra, *(["--json"] if as_json else []))
            assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
            assert len(result.stderr.splitlines()) <= 1, result.stderr
            no_secrets(result.stdout + result.stderr)
            if as_json:
                for line in result.stdout.splitlines():
                    assert json.loads(line)["verdict"] in verdicts.VERDICTS
            else:
                assert re.findall(r"verdict: (\S+)", result.stdout)
                assert set(re.findall(r"verdict: (\S+)", result.stdout)) <= set(verdicts.VERDICTS)


# --- 4. bad input to the command line ------------------------------------------------

def cli(*arguments):
    return subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", *arguments], capture_output=True, text=True,
                          timeout=60)


def one_error_line(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    # (as dissect: "Error:" for what the user gave, "ovpndiag: error:" for a capture that could not be read)
    assert len(lines) == 1 and lines[0].startswith(("Error: ", "ovpndiag: error: ")), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_unreadable_captures_are_one_line_and_exit_1(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n" * 20)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((CAPTURES / "fail-untrusted-cert.pcap").read_bytes()[:3000])
    missing = tmp_path / "missing.pcap"
    for path in (text, empty, tmp_path, missing):
        one_error_line(cli(str(path)), 1, str(path))
    # a capture cut inside a record: its sessions, then the one line
    result = cli(str(cut))
    one_error_line(result, 1, "frame 7", "truncated")
    assert "verdict: incomplete" in result.stdout
    rng = random.Random(5)
    for name in ("fail-untrusted-cert-tcp.pcap", "keylog-auth-token.pcap", "busy-mixed.pcap"):
        if not (CAPTURES / name).exists():
            continue
        capture = entry(name)
        data = (CAPTURES / name).read_bytes()
        header, records = split_pcap(data)
        count = rng.randrange(len(records) // 3, len(records))  # (cut inside record count + 1)
        cut.write_bytes(header + b"".join(records[:count]) + records[count][:rng.randrange(1, len(records[count]))])
        extra = ["-p", str(capture["port"]), *(["--keylog", str(CAPTURES / capture["keylog"])] if capture.get("keylog")
                                              else [])]
        result = cli(str(cut), "--json", *extra)
        one_error_line(result, 1, "truncated")
        assert all(json.loads(line)["verdict"] in verdicts.VERDICTS for line in result.stdout.splitlines())
        assert result.stdout.splitlines(), name
    # the same from standard input
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "-"], input=data[:len(data) // 2],
                            capture_output=True, timeout=60)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1 and b"Traceback" not in result.stderr
    # one bad file among good ones: the good ones are analysed all the same
    result = cli(str(missing), str(CAPTURES / "fail-port-closed.pcap"))
    one_error_line(result, 1, str(missing))
    assert result.stdout.count("verdict: port-closed") == 4


def test_bad_options_keys_and_key_logs_are_one_line_and_exit_2(tmp_path):
    capture = str(CAPTURES / "fail-tls-auth-wrong-key.pcap")
    short_key = tmp_path / "short.key"
    short_key.write_text("-----BEGIN OpenVPN Static key V1-----\n0123abcd\n-----END OpenVPN Static key V1-----\n")
    garbage = tmp_path / "garbage.keys"
    garbage.write_bytes(bytes(random.Random(3).randrange(256) for _ in range(5000)))
    huge = tmp_path / "huge.keys"
    with open(huge, "wb") as file:  # (sparse: costs no disk)
        file.truncate(65 * 1024 * 1024)
    for arguments in (["--tls-auth", str(tmp_path / "missing.key")],
                      ["--tls-auth", str(short_key)],
                      ["--tls-crypt", str(CAPTURES / "fail-tls-auth-wrong-key.pcap")],
                      ["--tls-crypt-v2", str(CAPTURES / "keys/ta.key")],
                      ["--keylog", str(tmp_path)],
                      ["--keylog", str(tmp_path / "missing.keys")],
                      ["--keylog", str(garbage)],
                      ["--keylog", str(huge)],
                      ["--tls-auth", str(CAPTURES / "keys/ta.key"), "--auth", "SHA999"],
                      ["--config", str(tmp_path / "missing.conf")]):
        one_error_line(cli(capture, *arguments), 2)


def test_option_values_out_of_range_exit_2_without_a_traceback():
    for arguments in (["-j", "0"], ["-p", "0"], ["--key-direction", "2"], ["--wrapping", "tls-foo"]):
        result = cli(str(CAPTURES / "fail-port-closed.pcap"), *arguments)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stdout == ""
        # (click's usage error: a usage line, a hint, then the one line that says what is wrong)
        assert result.stderr.splitlines()[-1].startswith("Error: Invalid value for '" + arguments[0]), result.stderr
    one_error_line(cli(), 2, "no capture")


def test_no_key_material_is_printed():
    """The server's key against its clients (text and JSON), and a key log that opens
    a session with the user's password and an auth-token inside: none of them shown."""
    runs = []
    for name in ("fail-tls-auth-wrong-key.pcap", "fail-tls-auth-wrong-direction.pcap", "udp-tls-crypt-v2.pcap",
                 "fail-tls-crypt-wrong-key.pcap"):
        keys = server_keys(entry(name))
        options = [f"--{key.replace('_', '-')}={value}" for key, value in keys.items()]
        runs += [cli(str(CAPTURES / name), *options), cli(str(CAPTURES / name), *options, "--json")]
    token = ["-p", "3197", "--keylog", str(CAPTURES / "keylog-auth-token.keys")]
    runs += [cli(str(CAPTURES / "keylog-auth-token.pcap"), *token),
             cli(str(CAPTURES / "keylog-auth-token.pcap"), *token, "--json")]
    inside = b"".join(plain.data for plain in decrypted("keylog-auth-token.pcap").content)
    token = re.search(rb"auth-token ([^,\x00]+)", inside).group(1).decode()
    # (what must stay hidden was there to show: the password in the client's key-method 2
    # message, the token in the PUSH_REPLY; and the key log did open them)
    assert PASSWORD.encode() in inside and len(token) > 20
    for result in runs:
        assert result.returncode == 0, result.stderr
        no_secrets(result.stdout + result.stderr)
        assert token not in result.stdout + result.stderr
    assert "PUSH_REPLY" in runs[-2].stdout and "username given" in runs[-2].stdout, runs[-2].stdout


def decrypted(name):
    """The capture's key-0 TLS opened with its key log (analyze.tlsdecrypt), read from the
    tests' own parse of the packets (plain wrapping: opcode/key id, session id, ACKs,
    remote session id, packet-id, TLS)."""
    from ovpndiag.analyze.keylog import KeyLog
    from ovpndiag.analyze.tlsdecrypt import decrypt

    chunks, seen = {"client": [], "server": []}, set()
    for packet in openvpn_packets(entry(name)):
        data = packet.data
        if data[0] >> 3 != 4 or data[0] & 7:  # (P_CONTROL_V1 of key id 0 only)
            continue
        acks = data[9]
        at = 10 + 4 * acks + (8 if acks else 0)
        packet_id = int.from_bytes(data[at:at + 4], "big")
        if (packet.sender, packet_id) not in seen:
            seen.add((packet.sender, packet_id))
            chunks[packet.sender].append((packet_id, packet.frame, data[at + 4:]))
    client, server = ([(frame, tls) for _id, frame, tls in sorted(chunks[side])] for side in ("client", "server"))
    return decrypt(client, server, KeyLog.read(CAPTURES / entry(name)["keylog"]))


# --- 5. workers ---------------------------------------------------------------------

def test_workers_give_the_analyses_one_reader_gives(tmp_path):
    """Many sessions in one file (the failure and working UDP captures of the same link
    type one after the other, a second apart): -j 2 gives what -j 1 gives."""
    records, header = [], None
    offset = 1_800_000_000.0
    for name in FAILING + WORKING_UDP:
        data = (CAPTURES / name).read_bytes()
        if entry(name)["port"] != 1194 or data[20:24] != struct.pack("<I", 1) or data[:4] != b"\xd4\xc3\xb2\xa1":
            continue
        file_header, frames = split_pcap(data)
        header = header or file_header
        frames = moved(frames, offset)
        records += frames
        offset = when(frames[-1]) + 1.0
    path = tmp_path / "many.pcap"
    path.write_bytes(header + b"".join(records))
    one = by_workers(path, 1)
    assert len(one) > 20 and len({a["verdict"] for a in one}) > 5
    assert by_workers(path, 2) == one
    assert cli(str(path), "-j", "2").stdout == cli(str(path), "-j", "1").stdout
    # cut at many places: the sessions the cut leaves open are settled alike too
    for count in random.Random(2).sample(range(2, len(records)), 12):
        path.write_bytes(header + b"".join(records[:count]))
        assert by_workers(path, 2) == by_workers(path, 1), count
    # and cut inside a record: the same analyses of what precedes, the same one-line error
    for count in random.Random(3).sample(range(2, len(records)), 3):
        path.write_bytes(header + b"".join(records[:count]) + records[count][:len(records[count]) // 2])
        assert by_workers(path, 2, with_error=True) == by_workers(path, 1, with_error=True), count


def when(record) -> float:
    seconds, micros = struct.unpack("<II", record[:8])
    return seconds + micros / 1e6


def moved(records, start):
    """The (little-endian pcap) records with their times moved to begin at ``start``."""
    first = when(records[0])
    out = []
    for record in records:
        at = start + when(record) - first
        out.append(struct.pack("<II", int(at), round(at % 1 * 1e6) % 1_000_000) + record[8:])
    return out


def by_workers(path, jobs, with_error=False):
    """analyze.open(jobs=...)'s analyses (and the read error), checking that jobs > 1 did
    use workers."""
    with analyze.open([str(path)], jobs=jobs) as run:
        capture = next(iter(run))
        found = list(capture_analyses(capture))
        assert (capture.packed is not None) == (jobs > 1)
        if with_error:
            assert capture.error is not None and "truncated" in capture.error
            return found, capture.error
        return found
