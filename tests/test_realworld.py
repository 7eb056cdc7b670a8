"""Every OpenVPN packet in a capture is shown and every frame is counted (issue 9).

The oracle is tshark with Decode As on the capture's port (and the wrapping preferences
captures/README.md names): every frame it dissects as OpenVPN must be in `ovpndiag dissect
--json`, with and without `-p PORT`, for every bundled capture - the basic ones and the
real-world ones (captured mid-session, a float, a flood, unanswered resets, a --try-keys run,
static-key traffic) - and for every capture cut short at many points, as a tcpdump started
later would have written it. The tally line of `--sessions` must account for every frame.
"""

import functools
import re
import subprocess
import sys

import pytest

from captures import ALL_CAPTURES, CAPTURES, cut_capture, key_path, tshark_options, tshark_view

BY_NAME = {capture["file"]: capture for capture in ALL_CAPTURES}
# SYNs refused by RSTs, no payload at all: no OpenVPN to find, and TCP segments without
# payload outside OpenVPN conversations are in no count of the tally.
NO_PAYLOAD = {"fail-port-closed-tcp.pcap"}
TLS_MODE = [name for name, capture in BY_NAME.items() if capture["wrapping"] != "static-key" and name not in NO_PAYLOAD]
STATIC_KEY = [name for name, capture in BY_NAME.items() if capture["wrapping"] == "static-key"]
HINTS = ["no hint", "-p PORT"]
CONTROL_OPCODES = {"P_CONTROL_HARD_RESET_CLIENT_V1", "P_CONTROL_HARD_RESET_SERVER_V1", "P_CONTROL_SOFT_RESET_V1",
                   "P_CONTROL_V1", "P_ACK_V1", "P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2",
                   "P_CONTROL_HARD_RESET_CLIENT_V3", "P_CONTROL_WKC_V1"}


def ovpndiag(*args):
    """`ovpndiag ARGS` from this checkout: (exit status, stdout, stderr)."""
    run = subprocess.run([sys.executable, "-m", "ovpndiag", *args], capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout, run.stderr


def port_args(capture, hint):
    return ["-p", str(capture["port"])] if hint == "-p PORT" else []


@functools.lru_cache(maxsize=None)
def shown(path, port_option=()):
    """The records `dissect --json` prints for a file; a crash or an error fails the test here."""
    import json

    status, out, err = ovpndiag("dissect", "--json", *port_option, str(path))
    assert status == 0 and "Traceback" not in err and "internal error" not in err, err[-2000:]
    return [json.loads(line) for line in out.splitlines()]


TALLY = re.compile(r"^(?P<path>.+): (?P<frames>[\d,]+) frames, (?P<openvpn>[\d,]+) OpenVPN packets"
                   r"(?: \([\d,]+ in flows too short to be sure of\))?; "
                   r"skipped: (?P<skipped>.*)$", re.M)


def tally(path, port_option=()):
    """The tally line of `dissect --sessions`: frames, OpenVPN packets, and each skipped count
    by its label ("payloads of other protocols", "frames without UDP or TCP", ...)."""
    status, out, err = ovpndiag("dissect", "--sessions", *port_option, str(path))
    assert status == 0 and "Traceback" not in err, err[-2000:]
    lines = TALLY.findall(out)
    assert len(lines) == 1, f"no single tally line in:\n{out[-1000:]}"
    _path, frames, openvpn, skipped = lines[0]
    counts = {}
    for part in filter(None, (p.strip() for p in skipped.split(","))):
        number, label = re.fullmatch(r"([\d,]+) (.+)", part).groups()
        counts[label] = int(number.replace(",", ""))
    return int(frames.replace(",", "")), int(openvpn.replace(",", "")), counts


def _missing(expected, frames):
    missing = sorted(expected - frames)
    return f"{len(missing)} of {len(expected)} frames tshark dissects as OpenVPN are not shown, e.g. {missing[:12]}"


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize("name", TLS_MODE)
def test_every_packet_tshark_finds_is_shown(name, hint):
    capture = BY_NAME[name]
    path = CAPTURES / name
    expected = tshark_view(path, tshark_options(capture)).openvpn
    frames = {record["frame"] for record in shown(path, tuple(port_args(capture, hint)))}
    assert expected, "tshark found no OpenVPN: the oracle is broken"
    assert expected <= frames, _missing(expected, frames)
    assert frames <= expected, f"frames shown that tshark does not take for OpenVPN: {sorted(frames - expected)[:12]}"


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize("name", [name for name in BY_NAME if name not in NO_PAYLOAD])
def test_the_tally_accounts_for_every_frame(name, hint):
    """frames = frames with a packet shown + the rest of the OpenVPN conversations' frames that
    carry no packet (TCP ACKs, SYN/FIN, leading IP fragments) + every skipped count."""
    capture = BY_NAME[name]
    path = CAPTURES / name
    view = tshark_view(path, tshark_options(capture))
    records = shown(path, tuple(port_args(capture, hint)))
    frames, packets, skipped = tally(path, tuple(port_args(capture, hint)))
    assert frames == view.frames
    assert packets == len(records)
    with_packets = {record["frame"] for record in records}
    carrying_none = view.flows - view.openvpn - with_packets
    assert len(with_packets) + len(carrying_none) + sum(skipped.values()) == frames, (
        f"{len(with_packets)} frames shown, {len(carrying_none)} without a packet in OpenVPN "
        f"conversations, skipped {skipped}: {frames} frames to account for")


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize("name", STATIC_KEY)
def test_static_key_traffic_is_not_made_into_tls_sessions(name, hint):
    """Static-key (--secret) packets have no opcode: read as TLS mode they give random opcodes,
    key ids and peer-ids. ovpndiag must not invent control packets or sessions, and must say
    what the traffic is."""
    capture = BY_NAME[name]
    path = CAPTURES / name
    records = shown(path, tuple(port_args(capture, hint)))
    invented = [(r["frame"], r["opcode"]) for r in records
                if r.get("opcode") in CONTROL_OPCODES or r.get("opcode") == "P_DATA_V2" or "session_id" in r]
    assert not invented, f"made-up TLS-mode packets: {invented[:8]}"
    status, out, err = ovpndiag("dissect", *port_args(capture, hint), str(path))
    assert status == 0 and re.search(r"static[- ]key", out + err, re.I), out + err
    status, out, err = ovpndiag("dissect", "--sessions", "--json", *port_args(capture, hint), str(path))
    assert status == 0 and '"client_session_id"' not in out, out[:600]


# ---- what the real-world captures are about, beyond "every packet shown"

def _sessions(name, *args):
    import json

    status, out, err = ovpndiag("dissect", "--sessions", "--json", *args, str(CAPTURES / name))
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("name", [n for n, c in BY_NAME.items() if c.get("capture_start") == "mid-session"
                                  and c["group"] != "busy"] + ["udp-float.pcap"])  # (busy: many tunnels)
def test_a_tunnel_seen_from_its_middle_or_floating_is_one_session(name):
    sessions = _sessions(name)
    packets = tshark_view(CAPTURES / name, tshark_options(BY_NAME[name])).openvpn
    assert len(sessions) == 1, [(s["client_port"], s["client_session_id"], s["packets"]) for s in sessions]
    assert sum(sessions[0]["packets"].values()) >= len(packets)
    if BY_NAME[name]["renegotiation"]:
        assert {0, 1} <= set(sessions[0]["key_ids"])


def test_the_try_keys_run_is_inferred_per_session_so_the_servers_sha512_answer_verifies():
    """One socket sends resets with SHA1, SHA256, SHA512 ... HMACs: the server's answer is
    a valid SHA512 tls-auth packet, not "HMAC BAD MALFORMED" read with the flow's first digest."""
    name = "udp-try-keys.pcap"
    records = shown(CAPTURES / name, ("--tls-auth", str(key_path("keys/ta.key"))))
    answers = [r for r in records if r["opcode"] == "P_CONTROL_HARD_RESET_SERVER_V2"]
    assert answers
    for answer in answers:
        assert (answer["hmac_size"], answer["hmac_valid"], answer.get("malformed")) == (64, True, None)
        asked = [r for r in records if r.get("session_id") == answer["remote_session_id"]]
        assert [(r["hmac_size"], r["hmac_valid"]) for r in asked] == [(64, True)]


@pytest.mark.parametrize("name", ["udp-unanswered-4444.pcap"])
def test_unanswered_resets_on_any_port_are_shown_and_each_is_a_session(name):
    records = shown(CAPTURES / name)
    assert [r["opcode"] for r in records] == ["P_CONTROL_HARD_RESET_CLIENT_V2"] * len(records)
    assert len(records) >= 3 and len({r["session_id"] for r in records}) == len(records)
    assert len(_sessions(name)) == len(records)


@pytest.mark.parametrize("name", [n for n, c in BY_NAME.items() if c["group"] == "real-world"])
def test_workers_print_what_one_process_prints_on_real_world_captures(name):
    """(tests/test_parallel.py does this for the basic captures.)"""
    alone = ovpndiag("dissect", "--json", "--jobs", "1", str(CAPTURES / name))
    shared = ovpndiag("dissect", "--json", "--jobs", "3", str(CAPTURES / name))
    assert alone[0] == 0 and (alone[1] or name in STATIC_KEY) and shared == alone


# ---- captures cut short: a tcpdump started later

CUTS_PER_CAPTURE = 8  # start frames per capture: every 10th frame, spread out in long captures


def _cut_starts(frames):
    step = max(10, -(-frames // CUTS_PER_CAPTURE))
    if frames > 5000:  # the >25,000-packet flood: three cuts keep the test under a minute
        step = frames // 3
    return list(range(1 + step, frames + 1, step)) or [frames]


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_capture_cut_anywhere_loses_no_packet_tshark_finds(name, tmp_path):
    capture = BY_NAME[name]
    view = tshark_view(CAPTURES / name, tshark_options(capture))
    failures = []
    for start in _cut_starts(view.frames):
        cut = tmp_path / f"from-{start}-{name}"
        cut.write_bytes(cut_capture(CAPTURES / name, start))
        expected = tshark_view(cut, tshark_options(capture)).openvpn
        if capture["wrapping"] == "static-key":
            expected = frozenset()  # not TLS-mode OpenVPN: nothing to show, but nothing may crash
        frames = {record["frame"] for record in shown(cut, ("-p", str(capture["port"])))}
        if not expected <= frames:
            failures.append(f"from frame {start}: " + _missing(expected, frames))
    assert not failures, "\n".join(failures)
