"""``ovpndiag handshake`` and ``check --stage``: the command line, bad input, the
report and JSON rendering, the check's status line and perfdata."""

import json
import re
import subprocess
import sys

import pytest

from captures import key_path
from ovpndiag.client import HandshakeResult, Stage
from ovpndiag.handshake_check import evaluate, judge, to_dict
from ovpndiag.render.handshake import handshake_report

CA, CERT, KEY = (str(key_path(f"keys/{name}")) for name in ("ca.crt", "client.crt", "client.key"))
ROGUE_KEY = str(key_path("keys/rogue-client.key"))
STATUS = re.compile(r"^OPENVPN (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| (\S+=\S+ ?)+)?$")
PASSWORD = "s3cret-Pa55word"
KEY_BODY = open(KEY).read().splitlines()[1][:40]  # a piece of the private key's base64


def ovpndiag(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ovpndiag", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result, status):
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if status == 3:  # a plugin: the status line on stdout
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and STATUS.match(lines[0]) and lines[0].startswith("OPENVPN UNKNOWN - "), lines
        return lines[0]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# --- bad input: one line, exit 2 (handshake) or UNKNOWN (check), nothing sent ---------------

def _encrypted_key(tmp_path, passphrase=b"open sesame"):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(open(KEY, "rb").read(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(passphrase)))
    return path


def bad_inputs(tmp_path):
    """(options, what the one line must say) for each kind of bad input."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    one_line = tmp_path / "one-line.txt"
    one_line.write_text(f"{PASSWORD}\n")
    empty_user = tmp_path / "empty-user.txt"
    empty_user.write_text(f"\n{PASSWORD}\n")
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x00" + bytes(20))
    encrypted = _encrypted_key(tmp_path)
    wrong_pass = tmp_path / "wrong-pass.txt"
    wrong_pass.write_text("not the passphrase\n")
    return [
        (["--ca", tmp_path / "missing.crt"], "missing.crt: no such file"),
        (["--ca", tmp_path], "is a directory"),
        (["--ca", garbage], "garbage.pem: a certificate in it cannot be read"),
        (["--ca", text], "notes.txt: no PEM CA found"),
        (["--ca", der], "ca.der: is DER, not PEM"),
        (["--cert", CERT, "--key", tmp_path / "missing.key"], "missing.key: no such file"),
        (["--cert", CERT, "--key", CERT], "no PEM private key found"),
        (["--cert", KEY, "--key", KEY], "no certificate found"),
        (["--cert", CERT, "--key", ROGUE_KEY], "does not match the certificate"),
        (["--cert", CERT], "--cert and --key go together"),
        (["--cert", CERT, "--key", encrypted], "the private key is encrypted: give its passphrase"),
        (["--cert", CERT, "--key", encrypted, "--askpass", wrong_pass], "does not open with the --askpass passphrase"),
        (["--auth-user-pass", one_line], "one-line.txt: holds one line only"),
        (["--auth-user-pass", empty_user], "no username on the first line"),
        (["--data-ciphers", "AES-256-CBC"], "data cipher 'AES-256-CBC' is not one"),
        (["--ping-target", "gateway"], "--ping-target must be an IP address"),
    ]


@pytest.mark.parametrize("index", range(16))
def test_bad_input_is_one_line_and_exit_2_for_handshake_unknown_for_check(tmp_path, index):
    options, expect = bad_inputs(tmp_path)[index]
    handshake = one_line_error(ovpndiag("handshake", "127.0.0.1", "-p", "9", *options), 2)
    assert expect in handshake, handshake
    checked = one_line_error(ovpndiag("check", "127.0.0.1", "-p", "9", "--stage", "push", *options), 3)
    assert expect in checked, checked
    for result in (handshake, checked):
        assert PASSWORD not in result and KEY_BODY not in result


def test_bad_inputs_cover_every_case(tmp_path):
    assert len(bad_inputs(tmp_path)) == 16


def test_check_at_the_reset_stage_reads_no_credentials(tmp_path):
    """check's default stays the reset probe: a profile asking for a password at a
    prompt, or a CA that is not one, does not stop it (they serve later stages)."""
    profile = tmp_path / "client.ovpn"
    profile.write_text("client\nremote 127.0.0.1 9\nauth-user-pass\nca nowhere.crt\n")
    result = ovpndiag("check", "--config", profile, "-t", "1", "--retries", "0")
    assert result.returncode == 2 and "nothing listens on that UDP port" in result.stdout, result.stdout
    staged = ovpndiag("check", "--config", profile, "--stage", "tls")
    assert staged.returncode == 3 and "nowhere.crt: no such file" in staged.stdout, staged.stdout
    prompt = ovpndiag("check", "--config", profile, "--stage", "auth", "--ca", CA)
    assert prompt.returncode == 3 and "auth-user-pass without a file asks at a prompt" in prompt.stdout


# --- rendering a HandshakeResult ---------------------------------------------------------------

def _result(verdict="ok", days=200.0, stages=("reset", "tls", "auth", "push", "data"), failed=None, **extra):
    result = HandshakeResult("vpn.example.net", 1194, "udp", "192.0.2.1", wrapping="tls-crypt")
    time = 0.0
    for name in stages:
        time += 0.002
        result.stages.append(Stage(name, name != failed, time, f"{name} detail"))
    result.elapsed = time
    result.verdict, result.message = verdict, extra.pop("message", "all done")
    if "tls" in stages:
        result.server_certificate = {
            "subject": "CN=server", "issuer": "CN=Test CA", "serial": "0x1f", "not_before": "2026-01-01 00:00:00",
            "not_after": "2027-06-01 00:00:00", "days_left": days, "verified": True, "key": "EC P-256",
            "signature_algorithm": "ecdsa-with-SHA256", "chain": ["CN=server", "CN=Test CA"]}
        result.tls = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    if "push" in stages and failed != "push":
        result.push_reply = {"ifconfig": "10.8.0.2 255.255.255.0", "route-gateway": "10.8.0.1",
                             "route": ["10.9.0.0 255.255.0.0", "10.10.0.0 255.255.0.0"], "peer-id": 0,
                             "cipher": "AES-256-GCM", "raw": "PUSH_REPLY,route-gateway 10.8.0.1,..."}
    if "data" in stages and failed != "data":
        result.data = {"cipher": "AES-256-GCM", "sent": 4, "received": 3, "rtt": 0.0004, "key_derivation": "tls-ekm"}
        result.exit_sent = "cc-exit"
    for name, value in extra.items():
        setattr(result, name, value)
    return result


def plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_report_of_a_success_shows_every_stage_certificate_push_data_and_verdict():
    result = _result()
    report = plain(handshake_report(result, judge(result), "data")).splitlines()
    assert report[0] == "Handshake with vpn.example.net port 1194/udp with tls-crypt"
    stages = [line.split()[:3] for line in report if line.startswith("  [")]
    assert stages == [["[ok]", "reset", "+0.0020"], ["[ok]", "tls", "+0.0040"], ["[ok]", "auth", "+0.0060"],
                      ["[ok]", "push", "+0.0080"], ["[ok]", "data", "+0.0100"]]
    text = "\n".join(report)
    assert "  subject    CN=server" in text and "  issuer     CN=Test CA" in text
    assert "(200 days left)" in text and "chain      CN=server <- CN=Test CA" in text
    assert "TLS: TLSv1.3, TLS_AES_256_GCM_SHA384" in text
    assert "  route 10.9.0.0 255.255.0.0\n  route 10.10.0.0 255.255.0.0" in text
    assert "  ifconfig 10.8.0.2 255.255.255.0" in text and "PUSH_REPLY," not in text
    assert "Data channel: AES-256-GCM (keys from the TLS exporter), 4 echoes sent, 3 answered, 25% lost, " \
           "rtt 0.40 ms" in text
    assert "Closed with EXIT through the control channel (cc-exit)" in text
    assert report[-1] == "Verdict: OK ok - all done"


def test_report_of_a_failure_names_the_stage_and_what_to_try():
    result = _result("auth-failed", stages=("reset", "tls", "auth"), failed="auth",
                     message="authentication failed (AUTH_FAILED)")
    judgement = judge(result)
    report = plain(handshake_report(result, judgement, "data"))
    assert "  [FAIL] auth   +0.0060 s  auth detail" in report
    assert "  [--]   push   not reached\n  [--]   data   not reached" in report
    assert "Verdict: CRITICAL auth-failed - authentication failed (AUTH_FAILED)" in report
    assert "What to try:\n  - check the username and password" in report
    assert "Pushed options" not in report and "Data channel" not in report


@pytest.mark.parametrize("days, state, verdict", [
    (200, "OK", "ok"), (20, "WARNING", "certificate-expiring"), (5, "CRITICAL", "certificate-expiring"),
    (-3, "CRITICAL", "certificate-expired")])
def test_certificate_days_set_the_state_and_verdict(days, state, verdict):
    judgement = judge(_result(days=days), 30, 7)
    assert (judgement.state_name, judgement.verdict) == (state, verdict)
    if days < 200:
        assert "server certificate" in judgement.message and judgement.advice


def test_a_failure_keeps_its_verdict_when_the_certificate_also_ends_soon():
    result = _result("auth-failed", days=3, stages=("reset", "tls", "auth"), failed="auth", message="AUTH_FAILED")
    judgement = judge(result)
    assert (judgement.state_name, judgement.verdict) == ("CRITICAL", "auth-failed")
    assert "ends in 3 days" in judgement.message


def test_auth_pending_is_a_warning():
    result = _result("auth-pending", stages=("reset", "tls", "auth"), failed="auth", message="AUTH_PENDING")
    assert judge(result).state_name == "WARNING"


def test_json_has_the_issues_keys_and_the_judgement():
    result = _result(days=20)
    data = json.loads(json.dumps(to_dict(result, judge(result))))
    for key in ("host", "port", "proto", "address", "state", "verdict", "message", "stages", "server_certificate",
                "tls", "push_reply", "data", "advice"):
        assert key in data, key
    assert (data["state"], data["verdict"]) == ("WARNING", "certificate-expiring")
    assert [(s["name"], s["ok"], s["elapsed"]) for s in data["stages"]][:2] == [("reset", True, 0.002),
                                                                               ("tls", True, 0.004)]
    for key in ("subject", "issuer", "serial", "not_before", "not_after", "days_left", "verified", "chain"):
        assert key in data["server_certificate"]
    assert {"cipher", "sent", "received", "rtt"} <= set(data["data"])


def test_check_status_line_and_perfdata_of_a_success():
    from ovpndiag.render.nagios import plugin_output

    line = plugin_output(evaluate(_result(), "data", timeout=10)).splitlines()[0]
    assert STATUS.match(line), line
    assert line.startswith("OPENVPN OK - 192.0.2.1:1194/udp: handshake OK up to data in 10.0 ms (TLSv1.3 ")
    perf = line.split(" | ")[1].split()
    assert perf == ["time=0.01s;;;0;10", "reset=0.002s", "tls=0.004s", "auth=0.006s", "push=0.008s",
                    "data=0.01s", "cert_days=200;30:;7:"]


def test_check_status_line_names_the_failed_stage_and_why():
    from ovpndiag.render.nagios import plugin_output

    result = _result("auth-failed", stages=("reset", "tls", "auth"), failed="auth",
                     message="authentication failed (AUTH_FAILED)")
    outcome = evaluate(result, "push", timeout=10)
    line = plugin_output(outcome).splitlines()[0]
    assert outcome.state == 2
    assert line.startswith("OPENVPN CRITICAL - 192.0.2.1:1194/udp: auth stage failed: authentication failed "
                           "(AUTH_FAILED) | time=U;;;0;10 reset=0.002s tls=0.004s cert_days=200;30:;7:"), line


@pytest.mark.parametrize("days, state", [(20, 1), (5, 2), (-1, 2)])
def test_check_certificate_days_warning_and_critical(days, state):
    from ovpndiag.render.nagios import plugin_output

    outcome = evaluate(_result(days=days), "tls", timeout=10, cert_warning=30, cert_critical=7)
    assert outcome.state == state
    line = plugin_output(outcome)
    assert f"cert_days={-1 if days < 0 else days};30:;7:" in line and "server certificate" in line


def test_check_time_thresholds_apply_to_a_staged_check():
    from ovpndiag.monitoring import Range

    outcome = evaluate(_result(), "data", Range.parse("0.001"), Range.parse("5"), timeout=10)
    assert outcome.state == 1 and "beyond the warning threshold 0.001 s" in outcome.message


# --- profiles: the handshake's options, inline or as files ------------------------------------

def _profile(tmp_path, inline=True):
    def block(tag, path):
        return f"<{tag}>\n{open(path).read().strip()}\n</{tag}>\n"

    credentials = tmp_path / "login.txt"
    credentials.write_text(f"alice\n{PASSWORD}\n")
    if inline:
        body = block("ca", CA) + block("cert", CERT) + block("key", KEY) + f"<auth-user-pass>\nalice\n{PASSWORD}\n" \
                                                                            "</auth-user-pass>\n"
    else:
        for name in ("ca.crt", "client.crt", "client.key"):
            (tmp_path / name).write_bytes(key_path(f"keys/{name}").read_bytes())
        body = "ca ca.crt\ncert client.crt\nkey client.key\nauth-user-pass login.txt\n"
    path = tmp_path / "client.ovpn"
    path.write_text("client\nremote 127.0.0.1 1195 udp\n" + body + "remote-cert-tls server\n"
                    "verify-x509-name 'ovpndiag-test-server' name\ndata-ciphers aes-128-gcm:CHACHA20-POLY1305\n")
    return path


@pytest.mark.parametrize("inline", [True, False])
def test_profile_gives_ca_cert_key_credentials_and_checks(tmp_path, inline):
    from ovpndiag.handshake_settings import handshake_settings
    from ovpndiag.profile import read_profile
    from ovpndiag.settings import probe_settings

    path = _profile(tmp_path, inline)
    profile = read_profile(path)
    assert PASSWORD not in repr(profile) and KEY_BODY not in repr(profile)
    settings = handshake_settings(probe_settings(config=str(path)), config=str(path), stage="data")
    if inline:
        assert settings.ca == open(CA, "rb").read().strip() and settings.key.startswith(b"-----BEGIN PRIVATE KEY")
    else:  # files beside the profile, handed on as paths
        assert (settings.ca, settings.cert, settings.key) == tuple(str(tmp_path / n) for n in
                                                                   ("ca.crt", "client.crt", "client.key"))
    assert settings.auth_user_pass == ("alice", PASSWORD)
    assert settings.remote_cert_tls == "server"
    assert settings.verify_x509_name == ("ovpndiag-test-server", "name")
    assert settings.data_ciphers == ["AES-128-GCM", "CHACHA20-POLY1305"]
    assert (settings.probe.host, settings.probe.port) == ("127.0.0.1", 1195)
    assert PASSWORD not in repr(settings) and KEY_BODY not in repr(settings)
    # the command line wins over the profile
    mine = handshake_settings(probe_settings(config=str(path)), config=str(path), verify_x509_name="CN=other",
                              data_ciphers="AES-256-GCM", stage="tls")
    assert mine.verify_x509_name == ("CN=other", "subject") and mine.data_ciphers == ["AES-256-GCM"]
    assert mine.auth_user_pass is None  # not read for a stage that does not use it


def test_profile_bad_handshake_options_name_the_line(tmp_path):
    from ovpndiag.profile import ProfileError, parse_profile

    with pytest.raises(ProfileError, match="x.ovpn:2: verify-x509-name type must be one of"):
        parse_profile("client\nverify-x509-name server cn\n", "x.ovpn")
    with pytest.raises(ProfileError, match="x.ovpn:1: remote-cert-tls must be server or client"):
        parse_profile("remote-cert-tls srv\n", "x.ovpn")


def test_a_pkcs12_profile_is_refused_in_one_line(tmp_path):
    path = tmp_path / "p12.ovpn"
    path.write_text("client\nremote 127.0.0.1 9\npkcs12 client.p12\n")
    result = one_line_error(ovpndiag("handshake", "--config", path), 2)
    assert "p12.ovpn:3: pkcs12 is not supported" in result


def test_contrib_files_use_only_options_check_has():
    """A misspelt option in a CheckCommand fails only when the service runs: catch it here."""
    from pathlib import Path

    from ovpndiag.cli import check

    root = Path(__file__).resolve().parent.parent
    known = {name for param in check.params for name in getattr(param, "opts", [])}
    icinga = re.findall(r'^\s*"(-[-\w]+)" = \{', (root / "contrib/icinga2/ovpndiag.conf").read_text(), re.M)
    nagios = re.findall(r"\s(--[\w-]+)", "\n".join(
        line for line in (root / "contrib/nagios/ovpndiag.cfg").read_text().splitlines() if "command_line" in line))
    assert {"--stage", "--ca", "--cert", "--key", "--auth-user-pass", "--cert-warning", "--cert-critical"} <= set(icinga)
    assert {"--config", "--stage", "--cert-warning", "--cert-critical"} <= set(nagios)
    assert set(icinga) | set(nagios) <= known, (set(icinga) | set(nagios)) - known
