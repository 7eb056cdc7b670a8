"""ovpndiag analyze on the real captures: every session's verdict, with and without the
server's keys, its evidence and its JSON.

What each capture's sessions must be called comes from how it was recorded (the
manifest: its server's key, digest and key-direction; its description and the peers'
logs in captures/logs), not from analyze's output: a client whose resets a tls-auth
server dropped is server-silent without the key and wrong-key with it, and so on.
"""

import json
import re
import subprocess
import sys

import pytest

from captures import ALL_CAPTURES, CAPTURES, entry
from ovpndiag import analyze

# capture -> (verdict without keys, verdict with the server's key): the manifest says
# which failure each one recorded (its description and the server's log say why).
FAILURES = {
    "fail-tls-auth-wrong-key.pcap": ("server-silent", "wrong-key"),
    "fail-tls-auth-wrong-direction.pcap": ("server-silent", "wrong-key-direction"),
    "fail-tls-auth-digest-mismatch.pcap": ("server-silent", "wrong-digest"),
    "fail-tls-crypt-wrong-key.pcap": ("server-silent", "wrong-key"),
    "fail-tls-crypt-v2-wrong-key.pcap": ("server-silent", "wrong-key"),
    "fail-no-tls-auth.pcap": ("server-silent", "no-tls-auth"),
    "udp-unanswered-4444.pcap": ("server-silent", "wrong-key"),
    "fail-untrusted-cert.pcap": ("client-certificate-rejected", None),
    "fail-untrusted-cert-tcp.pcap": ("client-certificate-rejected", None),
    "fail-client-cert-untrusted-tls12.pcap": ("client-certificate-rejected", None),
    "fail-expired-server-cert.pcap": ("server-certificate-rejected", None),
    "fail-expired-server-cert-tls13.pcap": ("server-certificate-rejected", None),  # (inferred: TLS 1.3)
    "fail-client-cert-untrusted-tcp-tls12.pcap": ("client-certificate-rejected", None),
    "fail-port-closed-tcp.pcap": ("port-closed", None),
    "fail-tls-version-mismatch.pcap": ("client-hello-rejected", None),
    # AUTH_FAILED travels inside TLS: without a key log the reason cannot be read
    "fail-auth-failed.pcap": ("stopped-after-tls", None),
    "fail-no-shared-cipher.pcap": ("stopped-after-tls", None),
    "fail-port-closed.pcap": ("port-closed", None),
}
CONNECTED = [e["file"] for e in ALL_CAPTURES if e.get("outcome") == "connected" and e["wrapping"] != "static"
             and e["file"] != "udp-static-key.pcap"]
JSON_KEYS = {"client", "server", "transport", "session_id", "remote_session_id", "wrapping", "start", "end",
             "stage_reached", "verdict", "evidence", "advice", "retransmissions", "rtt"}


def server_keys(capture) -> dict:
    """analyze.open's key arguments for the capture's server (its key, digest, direction)."""
    key = capture.get("key")
    if not key:
        return {}
    kind = {"tls-auth": "tls_auth", "tls-crypt": "tls_crypt", "tls-crypt-v2": "tls_crypt_v2"}[capture["wrapping"]]
    keys = {kind: str(CAPTURES / key)}
    if capture["wrapping"] == "tls-auth":
        keys["auth"] = capture["auth"]
        if capture.get("server_key_direction") is not None:
            keys["key_direction"] = str(capture["server_key_direction"])
    return keys


def analyses(name, jobs=1, **options):
    capture = entry(name)
    with analyze.open([str(CAPTURES / name)], ports=[capture["port"]], jobs=jobs, **options) as run:
        return list(run.sessions())


def assert_verdicts(found, expected, name):
    """Every session has ``expected``; only the last may be ``incomplete``, when the
    capture ends before it shows its end - and then it says what it would have been."""
    assert found, f"{name}: no session"
    verdicts = [analysis["verdict"] for analysis in found]
    assert verdicts[:-1] == [expected] * (len(found) - 1), (name, verdicts)
    last = found[-1]
    if last["verdict"] == "incomplete":
        assert f"had it ended there: {expected}" in last["evidence"][-1], (name, last["evidence"])
    else:
        assert last["verdict"] == expected, (name, verdicts)


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_each_failure_gets_its_verdict_without_keys(name):
    assert_verdicts(analyses(name), FAILURES[name][0], name)


@pytest.mark.parametrize("name", sorted(n for n, (_plain, keyed) in FAILURES.items() if keyed))
def test_the_servers_key_tells_why_its_clients_went_unanswered(name):
    found = analyses(name, **server_keys(entry(name)))
    # a key trial is a proof on its own: no session waits for its end
    assert [analysis["verdict"] for analysis in found] == [FAILURES[name][1]] * len(found)
    assert all(analysis["stage_reached"] == "none" for analysis in found)


@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-direction.pcap", "fail-tls-auth-digest-mismatch.pcap"])
def test_the_right_key_without_the_servers_direction_and_digest_is_not_called_wrong(name):
    keys = server_keys(entry(name))
    keys.pop("key_direction", None)
    keys.pop("auth", None)
    verdicts = {analysis["verdict"] for analysis in analyses(name, **keys)}
    assert "wrong-key" not in verdicts, verdicts


@pytest.mark.parametrize("name", sorted(CONNECTED))
def test_a_working_session_is_ok(name):
    found = analyses(name)
    assert [analysis["verdict"] for analysis in found] == ["ok"] * len(found), name
    assert all(analysis["stage_reached"] == "data" for analysis in found)


def test_an_expired_server_certificate_in_clear_is_named():
    found = analyses("fail-expired-server-cert.pcap")
    for analysis in found[:-1]:
        assert any(re.search(r"frame \d+: the certificate CN=ovpndiag-test-server.* expired on", line)
                   for line in analysis["evidence"]), analysis["evidence"]
        assert analysis["tls_version"] == "TLS 1.2"


def test_a_client_certificate_from_a_foreign_ca_is_named():
    found = analyses("fail-client-cert-untrusted-tls12.pcap")
    assert any("issued by CN=ovpndiag-rogue-ca" in line for line in found[0]["evidence"]), found[0]["evidence"]


def test_a_tls13_inference_says_its_confidence():
    found = analyses("fail-untrusted-cert.pcap")
    assert any("TLS 1.3 hides" in line and "confidence" in line for line in found[0]["evidence"])


def test_port_closed_cites_the_icmp_frames():
    found = analyses("fail-port-closed.pcap")
    icmp = _tshark_frames("fail-port-closed.pcap", "icmp.type == 3 and icmp.code == 3")
    cited = [int(re.match(r"frame (\d+):", analysis["evidence"][0]).group(1)) for analysis in found]
    assert cited == icmp


def test_the_server_closing_tcp_after_the_client_certificate_is_evidence():
    found = analyses("fail-untrusted-cert-tcp.pcap")
    fins = _tshark_frames("fail-untrusted-cert-tcp.pcap", "tcp.flags.fin == 1 and tcp.srcport == 1194")
    for analysis in found:
        line = next(line for line in analysis["evidence"] if "closed the TCP connection" in line)
        assert int(re.match(r"frame (\d+):", line).group(1)) in fins
        assert "the server closed" in line


def test_evidence_and_timeline_cite_the_sessions_own_frames():
    for name in FAILURES:
        for analysis in analyses(name):
            first, last = analysis["frames"]
            for line in analysis["evidence"]:
                for frame in map(int, re.findall(r"frames? (\d+)", line)):
                    if "new session" not in line:
                        assert first <= frame <= last, (name, line, analysis["frames"])
            assert [entry[0] for entry in analysis["timeline"]] == sorted(entry[0] for entry in analysis["timeline"])


def test_json_has_the_keys_the_issue_names():
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "--json",
                             str(CAPTURES / "fail-expired-server-cert.pcap")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(objects) == len(analyses("fail-expired-server-cert.pcap"))
    for shown in objects:
        assert JSON_KEYS <= set(shown), JSON_KEYS - set(shown)
        assert shown["stage_reached"] in ("none", "reset", "tls", "auth", "push", "data")
        assert all(set(item) == {"frame", "time", "from", "event"} for item in shown["timeline"])


def test_text_output_ends_with_the_table_of_verdicts():
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", str(CAPTURES / "fail-port-closed.pcap"),
                             str(CAPTURES / "udp-plain.pcap")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = result.stdout[result.stdout.index("Verdicts over"):]
    sessions = len(analyses("fail-port-closed.pcap")) + 1
    assert f"Verdicts over {sessions} sessions:" in table
    assert re.search(rf"\b{sessions - 1} port-closed +from 127\.0\.0\.1", table)
    assert re.search(r"\b1 ok +from 127\.0\.0\.1", table)
    assert result.stdout.count("\nSession ") + result.stdout.startswith("Session ") == sessions


def test_workers_give_what_one_reader_gives():
    for name in ("fail-untrusted-cert-tcp.pcap", "fail-port-closed.pcap", "udp-float.pcap"):
        assert analyses(name, jobs=2) == analyses(name, jobs=1), name


def _tshark_frames(name, display_filter):
    out = subprocess.run(["tshark", "-r", str(CAPTURES / name), "-Y", display_filter, "-T", "fields",
                          "-e", "frame.number"], capture_output=True, text=True, check=True).stdout
    return [int(line) for line in out.split()]


# --- --keylog: the key logs of real sessions of ovpndiag handshake against OpenVPN 2.6 ----

KEYLOGGED = [e for e in ALL_CAPTURES if e.get("keylog")]


@pytest.mark.parametrize("name", sorted(e["file"] for e in KEYLOGGED))
def test_a_key_log_reads_the_verdict_inside_tls(name):
    capture = entry(name)
    found = analyses(name, keylog=str(CAPTURES / capture["keylog"]))
    assert found[0]["verdict"] == capture["verdict"], (name, found[0]["evidence"])
    for analysis in found[1:]:  # (a client that tries again: its later sessions)
        assert analysis["verdict"] in (capture["verdict"], "incomplete")


@pytest.mark.parametrize("name, reason", [("keylog-auth-failed.pcap", "AUTH_FAILED"),
                                          ("keylog-no-shared-cipher.pcap", "no shared cipher")])
def test_what_the_server_said_inside_tls_is_the_evidence(name, reason):
    plain = analyses(name)[0]
    assert plain["verdict"] in ("stopped-after-tls", "incomplete")  # without the key log: not readable
    found = analyses(name, keylog=str(CAPTURES / entry(name)["keylog"]))[0]
    line = next(line for line in found["evidence"] if "(decrypted)" in line)
    assert reason in line and re.match(r"frame \d+: ", line)
    assert found["stage_reached"] == "push"


def test_a_key_log_of_other_sessions_opens_nothing_and_guesses_nothing():
    found = analyses("keylog-auth-failed.pcap", keylog=str(CAPTURES / entry("keylog-tls13.pcap")["keylog"]))[0]
    assert found["verdict"] in ("stopped-after-tls", "incomplete")
    assert any(entry[3].startswith("not decrypted: ") for entry in found["timeline"])


def test_secrets_inside_tls_are_never_shown():
    name = "keylog-auth-token.pcap"
    capture = entry(name)
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "--json", "-p", str(capture["port"]),
                             "--keylog", str(CAPTURES / capture["keylog"]), str(CAPTURES / name)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "PUSH_REPLY" in result.stdout and "auth-token [hidden]" in result.stdout
    password = (CAPTURES / "keys" / "user-pass.txt").read_text().splitlines()[1]
    secrets = [line.split()[-1] for line in (CAPTURES / capture["keylog"]).read_text().splitlines() if line.strip()]
    for secret in [password] + secrets:
        assert secret not in result.stdout + result.stderr


def test_the_readme_shows_what_analyze_prints():
    readme = (CAPTURES.parent / "README.md").read_text()
    command = "$ ovpndiag analyze captures/fail-client-cert-untrusted-tls12.pcap\n"
    shown = readme[readme.index(command) + len(command):]
    shown = shown[:shown.index("...\n")]
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "captures/fail-client-cert-untrusted-tls12.pcap"],
                            capture_output=True, text=True, cwd=CAPTURES.parent)
    assert result.stdout.startswith(shown)


def test_a_finished_session_is_kept_in_a_few_hundred_bytes_and_given_back_whole():
    from ovpndiag.analyze import trace

    judged = []
    original = trace.SessionTrace.to_dict

    def keep(self):
        analysis = original(self)
        judged.append(dict(analysis))
        return analysis

    trace.SessionTrace.to_dict = keep
    try:
        for name in list(FAILURES) + CONNECTED:
            analyses(name)
    finally:
        trace.SessionTrace.to_dict = original
    packed = [trace.FinishedAnalysis(analysis) for analysis in judged]
    assert [finished.to_dict() for finished in packed] == judged
    average = sum(len(finished.packed) for finished in packed) / len(packed)
    assert average < 450, average  # (zlib alone: about 610)


# --- a busy server: 22 real clients, 42 sessions of mixed outcomes, and a copy cut mid-way ------

def _by_session(found):
    """Sessions by (client port, first frame): a session the cut left without its client
    session id (data only) is still told apart."""
    return {(analysis["client_port"], analysis["frames"][0]): analysis for analysis in found}


@pytest.mark.parametrize("name", ["busy-mixed.pcap", "busy-mixed-cut.pcap"])
@pytest.mark.parametrize("keyed", [False, True])
def test_every_session_of_a_busy_capture_gets_its_verdict(name, keyed):
    """The manifest says, per session (recorded from which client with which fault), what
    it must be called without the server's key and with it (tls-auth SHA256, direction 0)."""
    capture = entry(name)
    keys = {"tls_auth": str(CAPTURES / "keys" / "ta.key"), "auth": "SHA256", "key_direction": "0"} if keyed else {}
    found = _by_session(analyses(name, **keys))
    expected = {(session["client_port"], session["first_frame"]): session["verdict_with_keys" if keyed else "verdict"]
                for session in capture["sessions"]}
    assert set(found) == set(expected)
    wrong = {sid: (found[sid]["client_port"], found[sid]["verdict"], verdict)
             for sid, verdict in expected.items() if found[sid]["verdict"] != verdict}
    assert not wrong, wrong


def test_the_table_of_a_busy_capture_counts_what_the_manifest_says():
    from collections import Counter

    capture = entry("busy-mixed.pcap")
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "analyze", "-p", str(capture["port"]),
                             str(CAPTURES / "busy-mixed.pcap")], capture_output=True, text=True)
    table = result.stdout[result.stdout.index("Verdicts over"):]
    for verdict, count in Counter(session["verdict"] for session in capture["sessions"]).items():
        assert re.search(rf"^ +{count} {re.escape(verdict)} +from 127\.0\.0\.1$", table, re.M), (verdict, table)
