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
        (["--keylog", tmp_path / "no-such-dir" / "keys.log"], "keys.log: cannot write: No such file or directory"),
        (["--keylog", tmp_path], "is not a regular file"),
    ]


@pytest.mark.parametrize("index", range(18))
def test_bad_input_is_one_line_and_exit_2_for_handshake_unknown_for_check(tmp_path, index):
    options, expect = bad_inputs(tmp_path)[index]
    handshake = one_line_error(ovpndiag("handshake", "127.0.0.1", "-p", "9", *options), 2)
    assert expect in handshake, handshake
    checked = one_line_error(ovpndiag("check", "127.0.0.1", "-p", "9", "--stage", "push", *options), 3)
    assert expect in checked, checked
    for result in (handshake, checked):
        assert PASSWORD not in result and KEY_BODY not in result


def test_bad_inputs_cover_every_case(tmp_path):
    assert len(bad_inputs(tmp_path)) == 18


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

SERVER_CERT = key_path("keys/server.crt")
PUSHED = ["route-gateway 10.8.0.1", "topology subnet", "ifconfig 10.8.0.2 255.255.255.0", "route 10.9.0.0 255.255.0.0",
          "route 10.10.0.0 255.255.0.0", "dhcp-option DNS 10.8.0.53", "peer-id 0", "cipher AES-256-GCM",
          "protocol-flags cc-exit tls-ekm", "auth-token SECRET-TOKEN", "tun-mtu 1500"]


def _certificate(days):
    """The facts the client gives of the bundled server certificate, seen ``days`` before it ends."""
    import datetime

    from cryptography import x509

    from ovpndiag.client.tlslayer import certificate_facts

    certificate = x509.load_pem_x509_certificate(SERVER_CERT.read_bytes())
    now = certificate.not_valid_after_utc - datetime.timedelta(days=days, hours=1)
    facts = certificate_facts(certificate, now)
    # as if it ended that far from today (an hour more, or less, than whole days)
    ends = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days, hours=1 if days >= 0 else -1)
    facts["not_after"] = ends.strftime("%Y-%m-%dT%H:%M:%SZ")
    facts.update(verified=True, chain=[{"subject": facts["subject"], "issuer": facts["issuer"]},
                                       {"subject": facts["issuer"], "issuer": facts["issuer"]}])
    return facts


def _result(verdict="ok", days=200, stages=("reset", "tls", "auth", "push", "data"), failed=None, **extra):
    from ovpndiag.client.push import parse_options

    result = HandshakeResult("vpn.example.net", 1194, "udp", "192.0.2.1:1194", wrapping="tls-crypt")
    time = 0.0
    for name in stages:
        time += 0.002
        result.stages.append(Stage(name, name != failed, time, f"{name} detail"))
    result.elapsed = time - 0.002 if "data" in stages else time  # (the client's lags after data: time covers it)
    result.verdict, result.message = verdict, extra.pop("message", "all done")
    if "tls" in stages:
        result.server_certificate = _certificate(days)
        result.tls = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    if "push" in stages and failed != "push":
        result.push_reply = parse_options(PUSHED)
    if "data" in stages and failed != "data":
        result.data = {"cipher": "AES-256-GCM", "sent": 4, "received": 3, "rtt": 0.0004, "key_derivation": "tls-ekm",
                       "format": "P_DATA_V2", "target": "10.8.0.1", "loss": 25.0, "rtt_min": 0.0003, "rtt_max": 0.0006,
                       "keepalive_pings": 2, "rejected": 0, "unreadable": 0}
        result.exit_sent = "cc-exit"
    for name, value in extra.items():
        setattr(result, name, value)
    return result


def plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_report_of_a_success_shows_every_stage_certificate_push_data_and_verdict():
    result = _result()
    report = plain(handshake_report(result, judge(result), "data")).splitlines()
    assert report[:2] == ["Handshake with vpn.example.net port 1194/udp with tls-crypt", "  address 192.0.2.1:1194"]
    stages = [line.split()[:3] for line in report if line.startswith("  [")]
    assert stages == [["[ok]", "reset", "+0.0020"], ["[ok]", "tls", "+0.0040"], ["[ok]", "auth", "+0.0060"],
                      ["[ok]", "push", "+0.0080"], ["[ok]", "data", "+0.0100"]]
    text = "\n".join(report)
    assert "  subject    O=ovpndiag test material, CN=ovpndiag-test-server\n" in text
    assert "  issuer     O=ovpndiag test material, CN=ovpndiag-test-ca\n" in text
    assert f"to {result.server_certificate['not_after']} (200 days left)" in text and "  verified   yes, against the CA given" in text
    assert "  chain      O=ovpndiag test material, CN=ovpndiag-test-server <- O=ovpndiag test material, " \
           "CN=ovpndiag-test-ca" in text
    assert "TLS: TLSv1.3, TLS_AES_256_GCM_SHA384" in text
    assert "Pushed options:\n  ifconfig 10.8.0.2 255.255.255.0\n  route-gateway 10.8.0.1\n  topology subnet\n" \
           "  route 10.9.0.0 255.255.0.0\n  route 10.10.0.0 255.255.0.0\n  dhcp-option DNS 10.8.0.53\n  peer-id 0\n" \
           "  cipher AES-256-GCM\n  protocol-flags cc-exit tls-ekm\n  auth-token [hidden]\n  tun-mtu 1500\n" in text
    assert "SECRET-TOKEN" not in text
    assert "Data channel: AES-256-GCM over P_DATA_V2 (keys from the TLS exporter), 4 echoes to 10.8.0.1, 3 answered, " \
           "25% lost, rtt min/avg/max 0.30/0.40/0.60 ms, 2 keepalive pings from the server\n" in text
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
    assert line.startswith("OPENVPN OK - 192.0.2.1:1194/udp: handshake OK up to data in 10.0 ms (TLSv1.3 "
                           "TLS_AES_256_GCM_SHA384; server O=ovpndiag test material, CN=ovpndiag-test-server, ends "
                           "in 200 days; AES-256-GCM, 3/4 echoes answered) | "), line
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
                    "verify-x509-name 'ovpndiag-test-server' name\ndata-ciphers aes-128-gcm:AES-256-CBC:CHACHA20-POLY1305\n")
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


def test_a_profile_naming_only_ciphers_we_do_not_speak_is_refused(tmp_path):
    from ovpndiag.handshake_settings import handshake_settings
    from ovpndiag.settings import SettingsError, probe_settings

    path = tmp_path / "old.ovpn"
    path.write_text("remote 127.0.0.1\ndata-ciphers AES-256-CBC:BF-CBC\n")
    with pytest.raises(SettingsError, match="old.ovpn:2: data-ciphers: names no cipher ovpndiag's data channel"):
        handshake_settings(probe_settings(config=str(path)), config=str(path))


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


# --- against real OpenVPN 2.6 servers --------------------------------------------------------

@pytest.fixture(scope="module")
def live():
    """Real servers with the test PKI, started on first use, stopped after this module."""
    from servers import auth_script_server, pki_server

    factories = {"valid": lambda: pki_server("valid"), "valid-tcp": lambda: pki_server("valid", proto="tcp"),
                 "ends-20d": lambda: pki_server("ends-20d"), "ends-5d": lambda: pki_server("ends-5d"),
                 "auth": lambda: auth_script_server()}
    running = {}

    def get(name):
        if name not in running:
            running[name] = factories[name]().start()
        return running[name]

    yield get
    for server in running.values():
        server.stop()


def pki_options(client="valid"):
    from pki import get_pki

    pki = get_pki()
    return ["--ca", pki.ca, "--cert", pki.client[client], "--key", pki.client_key[client]]


def credentials(tmp_path, password):
    from servers import AUTH_USER

    path = tmp_path / "login.txt"
    path.write_text(f"{AUTH_USER}\n{password}\n")
    return path


def test_handshake_report_against_a_real_server(live):
    server = live("valid")
    result = ovpndiag("handshake", server.host, "-p", server.port, *pki_options(), "-t", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Handshake with {server.host} port {server.port}/udp with no tls-auth/tls-crypt"
    stages = [line.split()[:2] for line in lines if line.startswith("  [")]
    assert stages == [["[ok]", name] for name in ("reset", "tls", "auth", "push", "data")], result.stdout
    assert "  verified   yes, against the CA given" in lines and "Closed with EXIT through the control channel (cc-exit)" \
        in lines
    assert any(re.match(r"Data channel: AES-256-GCM over P_DATA_V2 \(keys from the TLS exporter\), 1 echo to "
                        r"10\.\d+\.\d+\.1, 1 answered, 0% lost, rtt \d+\.\d\d ms$", line) for line in lines), result.stdout
    assert lines[-1].startswith("Verdict: OK ok - ")
    assert server.wait_for(r"exit message received by peer", 2)


def test_handshake_json_over_tcp(live, tmp_path):
    server = live("valid-tcp")
    capture = tmp_path / "handshake.pcap"
    keylog = tmp_path / "keys.log"
    result = ovpndiag("handshake", server.host, "-p", server.port, "--proto", "tcp", *pki_options(), "--json",
                      "--count", "3", "--write", capture, "--keylog", keylog)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["state"], data["verdict"], data["proto"], data["port"]) == ("OK", "ok", "tcp", server.port)
    assert data["address"] == f"127.0.0.1:{server.port}"
    assert [s["name"] for s in data["stages"]] == ["reset", "tls", "auth", "push", "data"]
    assert all(s["ok"] and s["elapsed"] > 0 for s in data["stages"])
    assert [s["elapsed"] for s in data["stages"]] == sorted(s["elapsed"] for s in data["stages"])
    certificate = data["server_certificate"]
    assert certificate["subject"].endswith("CN=server") and certificate["verified"] is True
    assert 360 <= certificate["days_left"] <= 366 and len(certificate["chain"]) >= 1
    assert data["tls"]["version"] == "TLSv1.3" and data["push_reply"]["cipher"] == "AES-256-GCM"
    assert (data["data"]["sent"], data["data"]["received"]) == (3, 3) and data["data"]["rtt"] is not None
    # the capture holds the exchange, and tshark reads it as OpenVPN over TCP
    shown = subprocess.run(["tshark", "-r", capture, "-d", f"tcp.port=={server.port},openvpn", "-T", "fields",
                            "-e", "openvpn.type"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and len(shown.stdout.split()) >= 10, shown.stdout + shown.stderr
    # the key log holds this session's TLS 1.3 secrets, for the ClientHello random in the capture
    lines = [line.split() for line in keylog.read_text().splitlines()]
    assert {line[0] for line in lines} >= {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                                           "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}
    assert len({line[1] for line in lines}) == 1 and bytes.fromhex(lines[0][1]) in capture.read_bytes()
    again = ovpndiag("handshake", server.host, "-p", server.port, "--proto", "tcp", *pki_options(), "--write",
                     capture)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten, nothing sent


def test_check_stage_push_is_ok_with_perfdata(live):
    server = live("valid")
    result = ovpndiag("check", server.host, "-p", server.port, "--stage", "push", *pki_options())
    line = result.stdout.splitlines()[0]
    assert result.returncode == 0 and STATUS.match(line), result.stdout + result.stderr
    assert line.startswith(f"OPENVPN OK - 127.0.0.1:{server.port}/udp: handshake OK up to push in ")
    perf = dict(item.split("=", 1) for item in line.split(" | ")[1].split())
    assert list(perf) == ["time", "reset", "tls", "auth", "push", "cert_days"]
    times = [float(perf[name].split(";")[0].rstrip("s")) for name in ("reset", "tls", "auth", "push")]
    assert times == sorted(times) and 0 < times[0] and times[-1] <= float(perf["time"].split(";")[0].rstrip("s"))
    days, warning, critical = perf["cert_days"].split(";")
    assert 360 <= int(days) <= 366 and (warning, critical) == ("30:", "7:")
    assert server.wait_for(r"exit message received by peer", 2)


@pytest.mark.parametrize("name, status, word", [("ends-20d", 1, "WARNING"), ("ends-5d", 2, "CRITICAL")])
def test_check_warns_before_the_server_certificate_ends(live, name, status, word):
    server = live(name)
    result = ovpndiag("check", server.host, "-p", server.port, "--stage", "data", *pki_options())
    line = result.stdout.splitlines()[0]
    assert result.returncode == status and line.startswith(f"OPENVPN {word} - "), result.stdout
    assert re.search(r" - the server certificate ends in \d+ days \([-0-9T:Z]+\) \| ", line), line
    perf = {name: float(value.split(";")[0].rstrip("s")) for name, value in
            (item.split("=", 1) for item in line.split(" | ")[1].split())}
    assert perf["time"] >= perf["data"] >= perf["push"] > 0, line  # time covers every stage
    days = int(re.search(r"cert_days=(-?\d+);30:;7:", line).group(1))
    assert days == (19 if name == "ends-20d" else 4) or days == (20 if name == "ends-20d" else 5)
    relaxed = ovpndiag("check", server.host, "-p", server.port, "--stage", "tls", *pki_options(),
                       "--cert-warning", "3", "--cert-critical", "1")
    assert relaxed.returncode == 0, relaxed.stdout


def test_auth_failed_names_the_stage_and_never_shows_the_password(live, tmp_path):
    from servers import AUTH_FAILED_REASON, AUTH_PASSWORD

    server = live("auth")
    wrong = credentials(tmp_path, PASSWORD)
    checked = ovpndiag("check", server.host, "-p", server.port, "--stage", "push", *pki_options(),
                       "--auth-user-pass", wrong, "-v")
    line = checked.stdout.splitlines()[0]
    assert checked.returncode == 2 and STATUS.match(line), checked.stdout
    assert re.match(rf"OPENVPN CRITICAL - 127.0.0.1:{server.port}/udp: (auth|push) stage failed: authentication "
                    rf"failed \(AUTH_FAILED: {AUTH_FAILED_REASON}\)", line), line
    report = ovpndiag("handshake", server.host, "-p", server.port, *pki_options(), "--auth-user-pass", wrong)
    assert report.returncode == 1 and "Verdict: CRITICAL auth-failed" in report.stdout
    as_json = ovpndiag("handshake", server.host, "-p", server.port, *pki_options(), "--auth-user-pass", wrong,
                       "--json")
    assert json.loads(as_json.stdout)["verdict"] == "auth-failed"
    for result in (checked, report, as_json):
        assert PASSWORD not in result.stdout + result.stderr
    right = credentials(tmp_path, AUTH_PASSWORD)
    ok = ovpndiag("handshake", server.host, "-p", server.port, *pki_options(), "--auth-user-pass", right, "--json",
                  "--stage", "push")
    assert ok.returncode == 0 and json.loads(ok.stdout)["state"] == "OK", ok.stdout
    assert AUTH_PASSWORD not in ok.stdout + ok.stderr


def test_a_profile_with_inline_blocks_walks_the_handshake(live, tmp_path):
    """ca/cert/key and the credentials inline, as exported profiles have them: the client
    gets PEM bytes, not files, and the server accepts the account given inline."""
    from pki import get_pki
    from servers import AUTH_PASSWORD, AUTH_USER

    server = live("auth")
    pki = get_pki()

    def block(tag, path):
        return f"<{tag}>\n{open(path).read().strip()}\n</{tag}>\n"

    profile = tmp_path / "monitor.ovpn"
    profile.write_text(f"client\ndev tun\nproto udp\nremote {server.host} {server.port}\nremote-cert-tls server\n"
                       "verify-x509-name server name\n" + block("ca", pki.ca) + block("cert", pki.client["valid"])
                       + block("key", pki.client_key["valid"]) + f"<auth-user-pass>\n{AUTH_USER}\n{AUTH_PASSWORD}\n"
                       "</auth-user-pass>\n")
    result = ovpndiag("check", "--config", profile, "--stage", "push")
    assert result.returncode == 0 and result.stdout.startswith("OPENVPN OK - "), result.stdout + result.stderr
    report = ovpndiag("handshake", "--config", profile, "--stage", "push")
    assert "  verified   yes, against the CA given" in report.stdout and AUTH_PASSWORD not in report.stdout
    # the same profile naming another server: the name check fails, and says so
    profile.write_text(profile.read_text().replace("verify-x509-name server name", "verify-x509-name vpn name"))
    refused = ovpndiag("check", "--config", profile, "--stage", "push")
    assert refused.returncode == 2 and "tls stage failed" in refused.stdout, refused.stdout


def test_check_of_a_closed_port_names_the_reset_stage_once():
    from servers import free_port

    port = free_port("udp")
    result = ovpndiag("check", "127.0.0.1", "-p", port, "--stage", "push", "-t", "2")
    line = result.stdout.splitlines()[0]
    assert result.returncode == 2 and STATUS.match(line), result.stdout
    assert line.startswith(f"OPENVPN CRITICAL - 127.0.0.1:{port}/udp: reset stage failed: ")
    assert line.count(f"127.0.0.1:{port}/udp") == 1 and line.endswith("| time=U;;;0;2")


def test_an_expired_certificate_says_how_long_ago_from_its_end_not_the_rounded_days():
    import datetime

    ended = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=25)
    result = _result("server-certificate-rejected", stages=("reset", "tls"), failed="tls",
                     message="server certificate verify failed: certificate has expired")
    result.server_certificate.update(not_after=ended.strftime("%Y-%m-%dT%H:%M:%SZ"), days_left=-2, verified=False,
                                     verify_errors=["depth 0: certificate has expired"])
    judgement = judge(result)
    report = plain(handshake_report(result, judgement, "tls"))
    assert "(EXPIRED 1 day ago)" in report and "  verified   NO: depth 0: certificate has expired" in report
    assert judgement.message.endswith(f"; the server certificate expired 1 day ago ({result.server_certificate['not_after']})")
    line = plain(handshake_report(_result(), judge(_result()), "data"))
    assert "EXPIRED" not in line


def test_without_a_ca_the_certificate_is_shown_as_not_verified():
    result = _result(stages=("reset", "tls"))
    result.server_certificate.update(verified=False, verify_errors=[
        "not verified: no CA given (--ca)", "depth 0: unable to get local issuer certificate"])
    report = plain(handshake_report(result, judge(result), "tls"))
    assert "  verified   no: no --ca given to verify it against\n" in report


def test_tls_version_max_tests_a_servers_minimum(tmp_path):
    """--tls-version-max 1.2 against a server with tls-version-min 1.3: the ClientHello is refused."""
    from servers import tls13_server

    server = tls13_server().start()
    try:
        capped = ovpndiag("check", server.host, "-p", server.port, "--stage", "tls", *pki_options(),
                          "--tls-version-max", "1.2", "-t", "2")
        assert capped.returncode == 2 and "tls stage failed: the server went silent after our ClientHello" \
            in capped.stdout, capped.stdout
        profile = tmp_path / "tls12.ovpn"
        profile.write_text(f"remote {server.host} {server.port}\ntls-version-max 1.2\n")
        from_profile = ovpndiag("check", "--config", profile, "--stage", "tls", *pki_options(), "-t", "2")
        assert from_profile.returncode == 2 and "ClientHello" in from_profile.stdout, from_profile.stdout
        plain13 = ovpndiag("check", server.host, "-p", server.port, "--stage", "tls", *pki_options())
        assert plain13.returncode == 0 and "TLSv1.3" in plain13.stdout, plain13.stdout
    finally:
        server.stop()


@pytest.mark.parametrize("proto, stage, evidence", [
    ("udp", "tls", "dropped a second session's ClientHello offering TLS 1.0-1.3 and every cipher suite too"),
    ("tcp", "reset", "closes a new idle connection at once too")])
def test_check_names_a_full_server(proto, stage, evidence):
    """A server with max-clients reached: CRITICAL, the stage it shows at, max-clients and why."""
    from servers import max_clients_server, pki_client

    server = max_clients_server(proto=proto).start()
    first = pki_client(server).start()  # the one client it takes
    try:
        result = ovpndiag("check", server.host, "-p", server.port, "--proto", proto, "--stage", "tls",
                          *pki_options(), "-t", "2", "-v")
    finally:
        first.stop()
        server.stop()
    line = result.stdout.splitlines()[0]
    assert result.returncode == 2 and STATUS.match(line), result.stdout
    assert line.startswith(f"OPENVPN CRITICAL - 127.0.0.1:{server.port}/{proto}: {stage} stage failed: "), line
    assert evidence in line and "max-clients reached" in line, line
    assert "verdict: max-clients" in result.stdout.splitlines(), result.stdout


def test_warn_on_retry_applies_to_a_staged_check():
    result = _result()
    result.stages[0].facts = {"resets_sent": 2}
    assert evaluate(result, "data", timeout=10).state == 0
    outcome = evaluate(result, "data", timeout=10, warn_on_retry=True)
    assert outcome.state == 1 and outcome.message.endswith(" - answered only after 2 resets")
    result.stages[0].facts = {"resets_sent": 1}
    assert evaluate(result, "data", timeout=10, warn_on_retry=True).state == 0


def test_check_over_ipv6_with_tls_auth_from_a_profile(tmp_path):
    """The probe's wrapping options reach the client: tls-auth SHA256 with key-direction from
    the profile's inline block, over IPv6; the server's log shows our clean exit."""
    from pki import get_pki
    from servers import pki_server

    server = pki_server("valid", family=6, wrapping="tls-auth", auth="SHA256", key_direction=0).start()
    try:
        pki = get_pki()
        ta = key_path("keys/ta.key").read_text().strip()
        profile = tmp_path / "v6.ovpn"
        profile.write_text(f"client\nremote ::1 {server.port} udp6\nauth SHA256\nkey-direction 1\n"
                           f"<tls-auth>\n{ta}\n</tls-auth>\nca {pki.ca}\ncert {pki.client['valid']}\n"
                           f"key {pki.client_key['valid']}\n")
        result = ovpndiag("check", "--config", profile, "--stage", "data")
        line = result.stdout.splitlines()[0]
        assert result.returncode == 0 and line.startswith(f"OPENVPN OK - [::1]:{server.port}/udp: handshake OK up "
                                                          "to data"), result.stdout + result.stderr
        assert server.wait_for(r"exit message received by peer", 2)
        wrong = ovpndiag("check", "--config", profile, "--stage", "data", "--key-direction", "0", "-t", "1.5")
        assert wrong.returncode == 2 and "reset stage failed" in wrong.stdout, wrong.stdout
    finally:
        server.stop()


def test_an_encrypted_key_opens_with_askpass(live, tmp_path):
    """The passphrase reaches the TLS layer: the server accepts the certificate of a key
    that only opens with it."""
    from cryptography.hazmat.primitives import serialization
    from pki import get_pki

    server = live("valid")
    pki = get_pki()
    key = serialization.load_pem_private_key(open(pki.client_key["valid"], "rb").read(), None)
    encrypted = tmp_path / "client.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(PASSWORD.encode())))
    askpass = tmp_path / "pass.txt"
    askpass.write_text(PASSWORD + "\n")
    args = ["check", server.host, "-p", server.port, "--stage", "push", "--ca", pki.ca, "--cert", pki.client["valid"],
            "--key", encrypted]
    result = ovpndiag(*args, "--askpass", askpass, "-v")
    assert result.returncode == 0 and result.stdout.startswith("OPENVPN OK - "), result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    without = ovpndiag(*args)
    assert without.returncode == 3 and "the private key is encrypted" in without.stdout


def test_wireshark_decrypts_a_write_capture_with_the_keylog(live, tmp_path):
    """What --keylog is for: tshark reads the TLS 1.3 handshake inside the control channel
    (the server's Certificate) only with the key log."""
    server = live("valid")
    capture, keylog = tmp_path / "session.pcap", tmp_path / "keys.log"
    result = ovpndiag("handshake", server.host, "-p", server.port, *pki_options(), "--stage", "push",
                      "--write", capture, "--keylog", keylog)
    assert result.returncode == 0, result.stdout + result.stderr

    def handshake_types(*extra):
        shown = subprocess.run(["tshark", "-r", capture, "-d", f"udp.port=={server.port},openvpn", *extra,
                                "-Y", "tls.handshake.type", "-T", "fields", "-e", "tls.handshake.type"],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return {int(t) for line in shown.stdout.split() for t in line.split(",")}

    assert {1, 2} <= handshake_types() and 11 not in handshake_types()  # ClientHello, ServerHello in clear
    assert {8, 11} <= handshake_types("-o", f"tls.keylog_file:{keylog}")  # EncryptedExtensions, Certificate


def test_check_verbose_tells_the_stages_certificate_and_pushed_options():
    from ovpndiag.render.nagios import plugin_output

    lines = plugin_output(evaluate(_result(), "data", timeout=10), verbose=True).splitlines()
    assert lines[1:6] == [f"[ok] {name} at +{0.002 * (i + 1):.4f} s: {name} detail"
                          for i, name in enumerate(("reset", "tls", "auth", "push", "data"))]
    assert lines[6].startswith("server certificate: O=ovpndiag test material, CN=ovpndiag-test-server, issuer ")
    assert lines[6].endswith(", verified")
    assert lines[7].startswith("pushed: route-gateway 10.8.0.1, topology subnet, ") and "auth-token [hidden]" in lines[7]
    assert "SECRET-TOKEN" not in "\n".join(lines) and lines[8] == "verdict: ok"


def test_a_file_with_both_certificate_and_key_serves_as_both(tmp_path):
    from ovpndiag.handshake_settings import handshake_settings
    from ovpndiag.settings import probe_settings

    both = tmp_path / "client.pem"
    both.write_text(open(CERT).read() + open(KEY).read())
    settings = handshake_settings(probe_settings(host="127.0.0.1"), cert=str(both), key=str(both), stage="tls")
    assert settings.cert == settings.key == str(both)
