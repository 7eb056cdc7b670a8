"""-T fields -e FIELD: tshark's tab-separated output over the --json keys.

Each value is checked against --json's on every bundled capture (every field, the
keys given), and the OpenVPN header fields against tshark's own -T fields output.
"""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from captures import ALL_CAPTURES, CAPTURES, entry, key_path, no_openvpn_packets, tshark_options
from ovpndiag.cli import main
from ovpndiag.dissect.displayfilter import FIELDS

PACKET_FIELDS = [name for name in FIELDS if name != "file"]


def run_dissect(*args):
    result = CliRunner().invoke(main, ["dissect", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def key_options(capture):
    if capture.get("key") and capture["wrapping"] in ("tls-auth", "tls-crypt", "tls-crypt-v2"):
        return [f"--{capture['wrapping']}", key_path(capture["key"])]
    return []


def fields_args(names):
    return ["-T", "fields", *[arg for name in names for arg in ("-e", name)]]


def as_tshark_prints(value):
    """What a --json value looks like in -T fields: empty if absent or null, lists joined
    with commas, booleans 1/0 (tshark 4.0), numbers as JSON writes them."""
    if value is None:
        return ""
    if value is True or value is False:
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(as_tshark_prints(item) for item in value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


@pytest.mark.parametrize("capture", ALL_CAPTURES, ids=[c["file"] for c in ALL_CAPTURES])
def test_every_field_of_every_packet_is_its_json_value(capture):
    path, keys = CAPTURES / capture["file"], key_options(capture)
    records = [json.loads(line) for line in run_dissect(path, *keys, "--json").stdout.splitlines()]
    result = run_dissect(path, *keys, *fields_args(PACKET_FIELDS))
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == len(records) and (records or capture["wrapping"] == "static-key" or no_openvpn_packets(capture))
    for row, record in zip(rows, records):
        assert row == [as_tshark_prints(record.get(name)) for name in PACKET_FIELDS]


@pytest.mark.parametrize("name", ["udp-plain.pcap", "udp-tls-auth-sha512.pcap", "udp6-frag.pcap"])
def test_the_header_fields_are_tsharks(name):
    capture = entry(name)
    theirs = ["frame.number", "openvpn.opcode", "openvpn.keyid", "openvpn.sessionid", "openvpn.mpid",
              "openvpn.mpidarrayelement", "openvpn.rsessionid", "openvpn.peerid"]
    ours = ["frame", "opcode_value", "key_id", "session_id", "message_packet_id", "acks", "remote_session_id",
            "peer_id"]
    out = subprocess.run(["tshark", "-n", "-r", str(CAPTURES / name), *tshark_options(capture), "-Y", "openvpn",
                          "-T", "fields", *[arg for field in theirs for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True, timeout=120).stdout

    def number(text, base):
        return "" if text == "" else str(int(text, base))
    expected = []
    for line in out.splitlines():
        frame, opcode, key_id, session_id, mpid, acks, remote, peer = line.split("\t")
        expected.append([frame, number(opcode, 16), key_id, session_id and f"{int(session_id):016x}", mpid, acks,
                         remote and f"{int(remote):016x}", peer])
    got = [line.split("\t") for line in run_dissect(CAPTURES / name, *fields_args(ours)).stdout.splitlines()]
    assert got == expected and len(got) > 10


def test_tsharks_E_options():
    path = CAPTURES / "udp-tls-auth-sha512.pcap"
    plain = run_dissect(path, *fields_args(["frame", "acks", "tls"]), "-c", "4").stdout.splitlines()
    assert plain[2] == "3\t0\tClient Hello"
    lines = run_dissect(path, *fields_args(["frame", "acks", "tls", "hmac_valid"]), "-c", "4", "-E", "header=y",
                    "-E", "separator=,", "-E", "quote=d", "-E", "aggregator=/s").stdout.splitlines()
    assert lines[0] == "frame,acks,tls,hmac_valid"  # (a header is never quoted)
    assert lines[1] == '"1",,,'  # empty values are left unquoted, as tshark does
    assert lines[4] == '"4","1","Server Hello Change Cipher Spec Application Data Application Data",'
    first = run_dissect(path, *fields_args(["frame", "tls"]), "-E", "occurrence=f", "-c", "4").stdout.splitlines()
    last = run_dissect(path, *fields_args(["frame", "tls"]), "-E", "occurrence=l", "-c", "4").stdout.splitlines()
    assert first[3] == "4\tServer Hello" and last[3] == "4\tApplication Data"
    keyed = run_dissect(path, "--tls-auth", key_path(entry("udp-tls-auth-sha512.pcap")["key"]),
                    *fields_args(["hmac_valid", "key_direction"]), "-c", "2").stdout.splitlines()
    assert keyed == ["1\t1", "1\t0"]  # a verified HMAC is 1
    bad = run_dissect(CAPTURES / "fail-tls-auth-wrong-key.pcap", "--tls-auth", key_path("keys/ta.key"),
                  *fields_args(["hmac_valid"]), "-c", "1").stdout
    assert bad == "0\n"


def test_fields_of_several_files_name_their_file_and_workers_print_the_same():
    files = [CAPTURES / "udp-plain.pcap", CAPTURES / "tcp-tls-auth.pcap"]
    args = [*files, *fields_args(["file", "frame", "opcode"]), "-Y", "opcode != P_DATA_V2"]
    alone, shared = run_dissect(*args, "-j", "1"), run_dissect(*args, "-j", "2")
    assert alone.exit_code == 0 and alone.stdout == shared.stdout
    rows = [line.split("\t") for line in alone.stdout.splitlines()]
    assert {row[0] for row in rows} == {str(path) for path in files} and "==>" not in alone.stdout
    assert all(row[2] != "P_DATA_V2" for row in rows)


@pytest.mark.parametrize("args, message", [
    (["-T", "fields", "-e", "opcod"], "Error: -e opcod: unknown field (did you mean opcode?)"),
    (["-T", "fields", "-e", "frame.number"], "Error: -e frame.number: unknown field (did you mean frame?)"),
    (["-e", "opcode"], "Error: -e and -E need -T fields"),
    (["-T", "fields"], "Error: -T fields needs at least one -e FIELD"),
    (["-T", "fields", "-e", "frame", "--json"], "Error: -T fields is an output of its own"),
    (["-T", "fields", "-e", "frame", "-E", "header=maybe"], "Error: -E header=maybe: use header=y|n"),
])
def test_bad_field_options_are_one_line_and_exit_status_2(args, message):
    done = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(CAPTURES / "udp-plain.pcap"), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(message), done.stderr


def test_T_json_is_json_lines():
    path = CAPTURES / "udp-plain.pcap"
    assert run_dissect(path, "-T", "json").stdout == run_dissect(path, "--json").stdout == run_dissect(path, "-T", "ek").stdout
