"""-Y display filters: Wireshark's syntax over the --json keys.

The oracle is tshark's own display-filter engine on the bundled real captures (Decode
As, as tests/captures.py sets it up): a filter and its Wireshark equivalent must pick
the same frames. The semantics Wireshark users rely on (absent fields, lists, and/or
precedence) are pinned on small records, in both forms a record takes (a dict with
the JSON keys, an object with attributes named as them).
"""

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from captures import CAPTURES, entry, key_path, tshark_options
from ovpndiag.cli import main
from ovpndiag.dissect.displayfilter import FIELDS, FilterError, compile_filter


def run_dissect(*args):
    result = CliRunner().invoke(main, ["dissect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def json_records(*args):
    result = run_dissect(*args, "--json")
    assert result.exit_code == 0, result.stdout
    return [json.loads(line) for line in result.stdout.splitlines()]


def tshark_frames(capture, wireshark_filter):
    out = subprocess.run(["tshark", "-n", "-r", str(CAPTURES / capture["file"]), *tshark_options(capture),
                          "-Y", f"openvpn && ({wireshark_filter})", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [int(number) for number in out.split()]


# --- against tshark, on real captures ---------------------------------------------

ORACLE_CAPTURES = ["udp-tls-auth-sha512.pcap", "tcp-tls-auth.pcap", "udp6-frag.pcap", "udp-tls-crypt.pcap"]
# (ovpndiag's filter, Wireshark's; PORT is the capture's server port)
EQUIVALENTS = [
    ("opcode == P_CONTROL_V1", "openvpn.opcode == 4"),
    ("opcode == 5 or opcode == \"P_CONTROL_HARD_RESET_SERVER_V2\"", "openvpn.opcode == 5 || openvpn.opcode == 8"),
    ("key_id == 0 && !(opcode == P_DATA_V2)", "openvpn.keyid == 0 && !(openvpn.opcode == 9)"),
    ("acks == 0", "openvpn.mpidarrayelement == 0"),
    ("message_packet_id >= 2 and message_packet_id < 5", "openvpn.mpid >= 2 and openvpn.mpid < 5"),
    ("remote_session_id", "openvpn.rsessionid"),
    ("sport == PORT or opcode in {P_ACK_V1, P_CONTROL_V1}",
     "udp.srcport == PORT || tcp.srcport == PORT || openvpn.opcode in {5, 4}"),
    ("src == 127.0.0.0/8 and length > 100 or dst == fd77:26::2 and not opcode == P_DATA_V2",
     "ip.src == 127.0.0.0/8 && (udp.length > 108 || openvpn.plen > 100) || ipv6.dst == fd77:26::2 && "
     "!openvpn.opcode == 9"),
]


@pytest.mark.parametrize("name", ORACLE_CAPTURES)
@pytest.mark.parametrize("ours, theirs", EQUIVALENTS, ids=[ours for ours, _ in EQUIVALENTS])
def test_a_filter_picks_the_frames_tsharks_equivalent_picks(name, ours, theirs):
    capture = entry(name)
    port = str(capture["port"])
    expected = tshark_frames(capture, theirs.replace("PORT", port))
    chosen = sorted({record["frame"] for record in json_records(CAPTURES / name, "-Y", ours.replace("PORT", port))})
    assert chosen == expected
    # Each picks some packets and leaves others (so the comparison can fail), except where tls-crypt
    # hides the fields (no key given: neither tool can read them).
    hidden = capture["wrapping"] == "tls-crypt" and ours.startswith(("acks", "message_packet_id", "remote"))
    assert (0 < len(expected) < len(json_records(CAPTURES / name))) or (hidden and not expected)


@pytest.mark.parametrize("name", ["udp-tls-auth-sha512.pcap", "udp-plain.pcap"])
def test_a_session_id_as_json_shows_it_picks_that_sessions_packets_as_tshark_does(name):
    capture = entry(name)
    session_id = json_records(CAPTURES / name, "-c", "1")[0]["session_id"]
    expected = tshark_frames(capture, f"openvpn.sessionid == 0x{session_id} || openvpn.rsessionid == 0x{session_id}")
    for ours in (f"session_id == {session_id} or remote_session_id == \"{session_id}\"",
                 f"session_id == 0x{session_id} || remote_session_id contains {session_id[:8]}"):
        chosen = [record["frame"] for record in json_records(CAPTURES / name, "-Y", ours)]
        assert chosen == expected and len(expected) > 2


def test_on_wireshark_a_field_that_is_absent_fails_every_comparison_and_tshark_agrees():
    """`!=` on a packet without the field is false (acks != 0 leaves out packets with
    no ACKs), and a list's != needs every element to differ - what tshark does."""
    capture = entry("udp-tls-auth-sha512.pcap")
    expected = tshark_frames(capture, "openvpn.mpidarrayelement != 0")
    records = json_records(CAPTURES / capture["file"], "-Y", "acks != 0")
    assert [record["frame"] for record in records] == expected
    assert all(record["acks"] and 0 not in record["acks"] for record in records)
    every = json_records(CAPTURES / capture["file"])
    assert any(not record.get("acks") for record in every) and any(0 in record.get("acks", ()) and
                                                                   len(record["acks"]) > 1 for record in every)


# --- the outputs a filter applies to ---------------------------------------------------

def frames_of_listing(text):
    return [int(line.split()[0]) for line in text.splitlines() if line and not line.startswith("==>")]


def test_every_output_shows_the_same_packets_and_workers_too():
    path = CAPTURES / "udp-tls-auth-bidir.pcap"
    keys = ["--tls-auth", key_path(entry("udp-tls-auth-bidir.pcap")["key"])]
    chosen = "opcode != P_DATA_V2 and (tls contains \"Hello\" or hmac_valid == true and acks)"
    expected = [r["frame"] for r in json_records(path, *keys) if r["opcode"] != "P_DATA_V2"
                and ("Hello" in ",".join(r.get("tls", ())) or (r.get("hmac_valid") is True and r.get("acks")))]
    assert len(expected) > 3
    assert [r["frame"] for r in json_records(path, *keys, "-Y", chosen)] == expected
    for jobs in ("1", "2"):
        listing = run_dissect(path, *keys, "-Y", chosen, "-j", jobs)
        assert frames_of_listing(listing.stdout) == expected
        assert [r["frame"] for r in json_records(path, *keys, "-Y", chosen, "-j", jobs)] == expected
    # the listing's lines are the unfiltered listing's own lines
    whole = {int(line.split()[0]): line for line in run_dissect(path, *keys).stdout.splitlines()}
    assert run_dissect(path, *keys, "-Y", chosen).stdout.splitlines() == [whole[frame] for frame in expected]
    # -V: the trees of the packets chosen, each as the whole -V shows it (one per record, blank-line separated)
    everything = json_records(path, *keys)
    trees = run_dissect(path, *keys, "-V").stdout.split("\n\n")
    assert len(trees) >= len(everything) > len(expected)
    chosen_trees = [tree for record, tree in zip(everything, trees) if record["frame"] in expected]
    assert run_dissect(path, *keys, "-Y", chosen, "-V").stdout.split("\n\n")[:-1] == chosen_trees
    limited = run_dissect(path, *keys, "-Y", chosen, "-c", "2")
    assert frames_of_listing(limited.stdout) == expected[:2]


def test_a_filter_that_matches_nothing_prints_nothing_and_exits_0():
    result = run_dissect(CAPTURES / "udp-plain.pcap", "-Y", "hmac_valid")  # no wrapping: no HMAC
    assert result.exit_code == 0 and result.stdout == ""


def test_with_sessions_the_sessions_with_a_matching_packet_are_shown_whole():
    path = CAPTURES / "udp-try-keys.pcap"  # many short sessions; the server answered one key combination
    every = json_records(path, "--sessions")
    answered = [s for s in every if s["packets"].get("P_CONTROL_HARD_RESET_SERVER_V2")]
    assert 0 < len(answered) < len(every) - 1
    assert json_records(path, "--sessions", "-Y", "opcode == P_CONTROL_HARD_RESET_SERVER_V2") == answered
    unanswered = json_records(path, "--sessions", "-Y", "opcode == P_CONTROL_HARD_RESET_CLIENT_V2 && "
                                                         "not remote_session_id")
    assert len(unanswered) == len(every)  # every session starts with a client reset
    text = run_dissect(path, "--sessions", "-Y", "opcode == P_CONTROL_HARD_RESET_SERVER_V2").stdout
    assert text.count("Session ") == len(answered) and "Session 1:" in text


# --- bad filters ---------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("opcod == 4", "-Y: unknown field 'opcod' at character 1 (did you mean opcode?)"),
    ("opcode == P_CONTROL_V1 and", "expected a field name, not the end of the filter at character 27"),
    ("(frame == 1", "expected ')' to close the '(' at character 1, not the end of the filter at character 12"),
    ("frame == one", "frame is a number, not 'one' at character 10"),
    ("hmac_valid == maybe", "hmac_valid is true, false or null, not 'maybe' at character 15"),
    ("opcode == P_CONTROL", "opcode has no value 'P_CONTROL' at character 11"),
    ("src == 300.1.1.1", "src is an IP address"),
    ("frame contains 1", "'contains' applies to text and lists, and frame is a number"),
    ("session_id == \"6acf2", "a string without its closing quote at character 15"),
    ("frame == 1 frame", "unexpected 'frame' (expected and, or or the end) at character 12"),
    ("tls matches \"(\"", "bad regular expression"),
    ("", "an empty filter"),
    ("frame.number == 3", "unknown field 'frame.number' at character 1 (did you mean frame?)"),
    ("udp.port == 1194", "unknown field 'udp.port' at character 1 (did you mean sport or dport?)"),
    ("file == a.pcap", "'file' names the capture, not a packet field: not in a filter at character 1"),
    ("hmac_valid = false", "'=' is not a comparison (use ==) at character 12"),
])
def test_a_bad_filter_is_one_line_naming_what_and_where_with_exit_status_2(text, message):
    done = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(CAPTURES / "udp-plain.pcap"), "-Y", text],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: -Y: ") and message in lines[0], done.stderr


# --- semantics, on records of both kinds ---------------------------------------------

class Record:
    """A record as an object with attributes named as the JSON keys (None: absent)."""

    def __init__(self, signed=False, **fields):
        self.signed = signed
        for name in FIELDS:
            setattr(self, name, fields.get(name))


RECORDS = [
    dict(frame=1, opcode="P_CONTROL_HARD_RESET_CLIENT_V2", opcode_value=7, key_id=0, session_id=0x6ACF203CF8668EE6,
         acks=[], hmac_valid=None, wrapping="tls-auth", src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=1194,
         transport="udp", length=42, time=1795613910.256272),
    dict(frame=2, opcode="P_ACK_V1", opcode_value=5, key_id=0, session_id=0x13DBA760978FE515, acks=[0, 1],
         remote_session_id=0x6ACF203CF8668EE6, hmac_valid=False, wrapping="tls-auth", src="10.0.0.2",
         dst="10.0.0.1", sport=1194, dport=40000, transport="udp", length=54, time=1795613910.3),
    dict(frame=3, opcode="P_CONTROL_V1", opcode_value=4, key_id=0, session_id=0x6ACF203CF8668EE6, acks=[1],
         hmac_valid=True, tls=["Client Hello"], message_packet_id=1, wrapping="tls-auth", src="2001:db8::1",
         dst="2001:db8::2", sport=40000, dport=1194, transport="tcp", length=375, time=1795613910.5),
    dict(frame=4, opcode="P_DATA_V2", opcode_value=9, key_id=1, peer_id=0, src="10.0.0.1", dst="10.0.0.2",
         sport=40000, dport=1194, transport="udp", length=100, time=1795613911.0),
]


def as_object(record):
    return Record(signed="hmac_valid" in record, **record)


@pytest.mark.parametrize("form", [dict, as_object], ids=["dict", "object"])
@pytest.mark.parametrize("text, frames", [
    ("hmac_valid", [1, 2, 3]),  # present, null included
    ("hmac_valid == null", [1]),
    ("hmac_valid != null", [2, 3]),
    ("hmac_valid == false", [2]),
    ("!hmac_valid == true", [1, 2, 4]),
    ("hmac_valid != true", [2]),  # absent and null fail every comparison
    ("peer_id != 1", [4]),
    ("not peer_id == 1", [1, 2, 3, 4]),
    ("acks", [2, 3]),  # an empty list is absent
    ("acks == 1", [2, 3]),  # any element
    ("acks != 0", [3]),  # every element
    ("acks contains 0", [2]),
    ("tls contains \"Hello\"", [3]),
    ("tls matches \"^client\"", [3]),  # case-insensitive, as Wireshark's matches
    ("opcode == 4 or opcode == p_ack_v1", [2, 3]),
    ("frame == 1 or frame == 2 and frame == 3", [1]),  # and binds tighter than or
    ("(frame == 1 or frame == 2) and frame == 2", [2]),
    ("frame eq 1 || frame gt 3", [1, 4]),
    ("session_id == 6acf203cf8668ee6", [1, 3]),
    ("session_id == 0x13DBA760978FE515 or remote_session_id == \"6acf203cf8668ee6\"", [2]),
    ("session_id contains 13dba7", [2]),
    ("src == 10.0.0.0/8 && dst != 10.0.0.1", [1, 4]),
    ("src == 2001:db8::/32", [3]),
    ("src == 10.0.0.1", [1, 4]),
    ("transport == TCP", [3]),
    ("length >= 54 and length < 375", [2, 4]),
    ("time > 1795613910.4", [3, 4]),
    ("opcode in {P_ACK_V1 P_DATA_V2}", [2, 4]),
    ("key_id in {1}", [4]),
    ("wrapping == \"tls-auth\" && !(acks)", [1]),
    ("malformed", []),
])
def test_wireshark_semantics(form, text, frames):
    test = compile_filter(text)
    assert [record["frame"] for record in RECORDS if test(form(record))] == frames


def test_every_json_key_of_every_bundled_capture_is_a_field():
    """The field list is the --json keys: a key the dissector adds must be filterable."""
    keys = set()
    from captures import ALL_CAPTURES

    for capture in ALL_CAPTURES:
        options = []
        if capture.get("key") and capture["wrapping"] in ("tls-auth", "tls-crypt", "tls-crypt-v2"):
            options = [f"--{capture['wrapping']}", key_path(capture["key"])]
        for record in json_records(CAPTURES / capture["file"], *options):
            keys.update(record)
    assert keys <= set(FIELDS) and {"hmac_valid", "key_direction", "tls", "acks", "dynamic"} <= keys


def test_an_error_knows_its_position():
    with pytest.raises(FilterError) as error:
        compile_filter("frame == 1 and (opcode == 4 or ackss)")
    assert error.value.position == 32 and "did you mean acks?" in str(error.value)


def test_the_filters_fields_are_the_records_fields():
    from ovpndiag.dissect import record

    assert set(FIELDS) == set(record.FIELDS) | {"file"}


def test_the_readmes_python_filter_example_prints_what_it_says():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```py\n(from ovpndiag import dissect\n.*?)```", readme, re.S).group(1)
    said = re.search(r"^# (.*)$", code, re.M).group(1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == said, done.stderr


def test_the_library_takes_a_filter_and_the_cli_shows_what_it_gives(tmp_path):
    from ovpndiag import dissect as library

    path = CAPTURES / "udp-tls-crypt.pcap"
    key = key_path(entry("udp-tls-crypt.pcap")["key"])
    chosen = "opcode == P_CONTROL_V1 or opcode == P_ACK_V1 and acks contains 1"
    shown = run_dissect(path, "--tls-crypt", key, "-Y", chosen).stdout.splitlines()
    with library.open(path, tls_crypt=key, display_filter=chosen) as run:
        assert list(run.lines()) == shown and len(shown) > 3
    with library.open(path, tls_crypt=key, display_filter=compile_filter(chosen)) as run:
        assert [record.frame for record in run.records()] == frames_of_listing("\n".join(shown))
    with pytest.raises(FilterError):
        library.open(path, display_filter="opcode ==")
    # --write-decrypted writes the packets shown, as tshark -Y -w does
    written = tmp_path / "chosen.pcap"
    assert run_dissect(path, "--tls-crypt", key, "-Y", chosen, "--write-decrypted", written).exit_code == 0
    again = json_records(written, "-p", entry("udp-tls-crypt.pcap")["port"])
    assert [r["opcode"] for r in again] == [line.split()[6] for line in shown]
