"""``ovpndiag check`` and ``check_openvpn`` as a monitoring system runs them:
real servers, real processes, exit codes, status line and perfdata."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from captures import key_path
from ovpndiag.monitoring import Range, RangeError, perfdata
from servers import GarbageUDPService, HTTPService, free_port

TA = str(key_path("keys/ta.key"))
BIN = Path(sys.executable).parent
STATUS = re.compile(r"^OPENVPN (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| (\S+=\S+ ?)+)?$")


def ovpndiag(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "ovpndiag", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def check_openvpn(*args):
    return subprocess.run([str(BIN / "check_openvpn"), *map(str, args)], capture_output=True, text=True, timeout=30)


def first_line(result):
    line = result.stdout.splitlines()[0]
    assert STATUS.match(line), line
    assert "Traceback" not in result.stdout + result.stderr
    return line


def perf(line):
    return dict(item.split("=", 1) for item in line.split(" | ", 1)[1].split())


def test_ok_with_perfdata(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA256")
    result = ovpndiag("check", server.host, "-p", server.port, "--tls-auth", TA, "--auth", "SHA256")
    line = first_line(result)
    assert result.returncode == 0
    assert line.startswith(f"OPENVPN OK - 127.0.0.1:{server.port}/udp answered in ")
    assert "(tls-auth SHA256, HMAC valid)" in line
    data = perf(line)
    value, warn, crit, low, high = data["time"].split(";")
    assert value.endswith("s") and 0 < float(value[:-1]) < 1 and (low, high) == ("0", "10")
    assert data["attempts"] == "1;;;0;3"


def test_thresholds_give_warning_and_critical(servers):
    server = servers.get(proto="udp")
    warning = ovpndiag("check", server.host, "-p", server.port, "-w", "0.0000001", "-c", "5")
    assert warning.returncode == 1 and "beyond the warning threshold" in first_line(warning)
    assert perf(first_line(warning))["time"].split(";")[1:3] == ["0.0000001", "5"]
    critical = ovpndiag("check", server.host, "-p", server.port, "-w", "0.0000001", "-c", "@0:10")
    assert critical.returncode == 2 and "critical threshold @0:10" in first_line(critical)


def test_verbose_adds_the_probe_story(servers):
    server = servers.get(proto="tcp")
    result = ovpndiag("check", server.host, "-p", server.port, "--proto", "tcp", "-v")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) > 5
    assert any(line.startswith("[ok] echoes our session id") for line in lines)


@pytest.mark.parametrize("case", ["wrong-key", "closed-udp", "closed-tcp", "garbage-udp", "http-tcp"])
def test_failures_are_critical(servers, case):
    services = []
    if case == "wrong-key":
        server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
        args = [server.host, "-p", server.port, "--tls-auth", key_path("keys/ta-wrong.key")]
        expect = "no reply"
    elif case == "closed-udp":
        args, expect = ["127.0.0.1", "-p", free_port("udp")], "nothing listens on that UDP port"
    elif case == "closed-tcp":
        args, expect = ["127.0.0.1", "-p", free_port("tcp"), "--proto", "tcp"], "TCP connection refused"
    elif case == "garbage-udp":
        services.append(GarbageUDPService())
        args, expect = ["127.0.0.1", "-p", services[0].port], "not OpenVPN"
    else:
        services.append(HTTPService())
        args, expect = ["127.0.0.1", "-p", services[0].port, "--proto", "tcp"], "not OpenVPN"
    try:
        result = ovpndiag("check", *args, "-t", "3", "--retries", "1", "--retry-interval", "1")
        line = first_line(result)
        assert result.returncode == 2 and line.startswith("OPENVPN CRITICAL - ") and expect in line
    finally:
        for service in services:
            service.close()


@pytest.mark.parametrize("args,expect", [
    (["no-such-host.invalid"], "cannot resolve no-such-host.invalid"),
    (["127.0.0.1", "--tls-auth", "/nonexistent/ta.key"], "/nonexistent/ta.key: no such file"),
    (["127.0.0.1", "--bogus-option"], "No such option"),
    (["127.0.0.1", "-w", "ten"], "'ten' is not a threshold range"),
    (["127.0.0.1", "-w", "nan"], "'nan' is not a threshold range"),
    (["127.0.0.1", "-c", " 5"], "' 5' is not a threshold range"),
    (["127.0.0.1", "-w", "1:infinity"], "'1:infinity' is not a threshold range"),
    (["127.0.0.1", "-t", "nan"], "--timeout must be a number of seconds more than 0"),
    (["127.0.0.1", "-t", "inf"], "--timeout must be a number of seconds more than 0"),
    (["127.0.0.1", "--retry-interval", "nan"], "--retry-interval a number of seconds"),
    (["127.0.0.1", "--tls-auth", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
    (["127.0.0.1", "--tls-auth", TA, "--tls-crypt", TA], "exclude each other"),
    (["127.0.0.1", "--auth", "SHA3", "--tls-auth", TA], "unknown --auth digest"),
    ([], "no host given"),
])
def test_bad_input_is_unknown_in_one_line(args, expect):
    result = ovpndiag("check", *args)
    assert result.returncode == 3 and expect in first_line(result)
    assert len(result.stdout.splitlines()) == 1


def test_malformed_key_file_is_unknown(tmp_path):
    bad = tmp_path / "ta.key"
    bad.write_text("-----BEGIN OpenVPN Static key V1-----\nnot hex\n-----END OpenVPN Static key V1-----\n")
    result = ovpndiag("check", "127.0.0.1", "--tls-auth", bad)
    assert result.returncode == 3 and f"{bad}: static key is not valid hex" in first_line(result)


def test_check_openvpn_options_keep_working(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    ok = check_openvpn(server.host, "-p", server.port, "--tls-auth", TA)
    assert ok.returncode == 0 and "HMAC valid" in first_line(ok)
    inverse = check_openvpn(server.host, "-p", server.port, "--tls-auth", TA, "--tls-auth-inverse",
                            "--retrycount", "2", "--timeout", "0.5")
    assert inverse.returncode == 2 and "to 2 resets" in first_line(inverse)
    material = bytes.fromhex("".join(line for line in Path(TA).read_text().splitlines()
                                     if line and not line.startswith(("#", "-"))))
    raw = check_openvpn(server.host, "-p", server.port, "--digest", "sha1", "--digest-size", "20",
                        "--digest-key-client", material[192:212].hex(),
                        "--digest-key-server", material[64:84].hex())
    assert raw.returncode == 0
    tcp_server = servers.get(proto="tcp")
    tcp = check_openvpn(tcp_server.host, "-t", "-p", tcp_server.port, "--no-validation")
    assert tcp.returncode == 0 and "/tcp answered" in first_line(tcp)
    assert check_openvpn("127.0.0.1", "--digest-size", "32").returncode == 3
    assert check_openvpn().returncode == 3


def test_probe_json_and_exit_status(servers):
    server = servers.get(proto="udp", wrapping="tls-crypt")
    result = ovpndiag("probe", server.host, "-p", server.port, "--tls-crypt", key_path("keys/tc.key"), "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["ok"] and data["verdict"] == "ok"
    assert data["reply"]["acks"] == [0] and data["wrapping"] == "tls-crypt"
    failed = ovpndiag("probe", "127.0.0.1", "-p", free_port("udp"), "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["verdict"] == "port-closed"


def test_probe_report_explains_in_plain_words(servers):
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    result = ovpndiag("probe", server.host, "-p", server.port, "--tls-auth", key_path("keys/ta-wrong.key"),
                      "--retries", "0", "--retry-interval", "0.5")
    assert result.returncode == 1
    assert "Verdict: FAILED - no reply" in result.stdout and "packet HMAC authentication failed" in result.stdout
    bad_key = ovpndiag("probe", "127.0.0.1", "--tls-auth", "/nonexistent.key")
    assert bad_key.returncode == 2 and "nonexistent.key: no such file" in bad_key.stderr
    assert "Traceback" not in bad_key.stderr


@pytest.mark.parametrize("server_config", [dict(proto="udp", wrapping="tls-auth", auth="SHA512", key_direction=0),
                                           dict(proto="tcp", wrapping="tls-auth", auth="SHA256", key_direction=None),
                                           dict(proto="udp", wrapping="tls-crypt")])
def test_try_keys_finds_the_servers_combination(servers, server_config):
    """Given only a key file (even one taken for a tls-auth key), find the rest."""
    server = servers.get(**server_config)
    result = ovpndiag("probe", server.host, "-p", server.port, "--proto", server.proto,
                      "--tls-auth", key_path(server.key), "--try-keys", "--json", timeout=60)
    data = json.loads(result.stdout)
    expected = {"tls-crypt": "tls-crypt"}.get(server_config["wrapping"]) or (
        f"tls-auth {server_config['auth']}, "
        + ("bidirectional" if server_config["key_direction"] is None else "key-direction 1"))
    assert result.returncode == 0 and data["working"] == [expected]


def test_write_saves_the_exchange_and_never_overwrites(servers, tmp_path):
    import scapy.layers.inet  # noqa: F401 - registers the raw-IP link type for rdpcap
    from scapy.utils import rdpcap

    from ovpndiag.layers import Wrapping, from_wire

    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA1")
    out = tmp_path / "probe.pcap"
    result = ovpndiag("probe", server.host, "-p", server.port, "--tls-auth", TA, "--write", out)
    assert result.returncode == 0
    frames = rdpcap(str(out))
    assert len(frames) == 2
    payloads = [bytes(frame.payload.payload) for frame in frames]
    opcodes = [from_wire(p, Wrapping.tls_auth("SHA1"))[0].opcode for p in payloads]
    assert opcodes == [7, 8]
    again = ovpndiag("probe", server.host, "-p", server.port, "--tls-auth", TA, "--write", out)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(rdpcap(str(out))) == 2


@pytest.mark.parametrize("text,alerts,quiet", [
    ("10", [-1, 11], [0, 10, 5]), ("10:", [9.9], [10, 1e9]), ("~:10", [10.5], [-1e9, 10]),
    ("10:20", [9, 21], [10, 20]), ("@10:20", [10, 15, 20], [9, 21]), ("0.5", [0.6], [0.5]),
])
def test_threshold_ranges(text, alerts, quiet):
    limit = Range.parse(text)
    assert all(limit.alerts(v) for v in alerts) and not any(limit.alerts(v) for v in quiet)


@pytest.mark.parametrize("text", ["", "abc", "20:10", "1:x", "@", ":", "~", "10:~",
                                  # what float() takes but the guidelines' ranges (and perfdata) do not:
                                  "nan", " 5", "5 ", "infinity", "inf", "-inf:", "1e3", "1_0", "+5", "NaN:"])
def test_bad_ranges(text):
    with pytest.raises(RangeError):
        Range.parse(text)


def test_perfdata_format():
    assert perfdata("time", 0.0032, "s", Range.parse("1"), Range.parse("2"), 0.0, 10.0) == "time=0.0032s;1;2;0;10"
    assert perfdata("attempts", 3, "", None, None, 0, 3) == "attempts=3;;;0;3"
    assert perfdata("time", None, "s") == "time=U"


def test_check_imports_neither_scapy_all_nor_tls_nor_ip_layers(servers):
    """A check runs every minute on many hosts: it must load only Scapy's core."""
    server = servers.get(proto="udp")
    code = ("import sys\nfrom ovpndiag.cli import main\n"
            f"sys.argv = ['ovpndiag', 'check', '127.0.0.1', '-p', '{server.port}']\n"
            "try:\n    main()\nexcept SystemExit as done:\n    status = done.code\n"
            "heavy = [m for m in sys.modules if m == 'scapy.all' or m.startswith(('scapy.layers', 'scapy.contrib'))]\n"
            "print('RESULT', status, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "RESULT 0 []" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("args,expect", [
    (["--timeout", "nan"], "--timeout must be a number of seconds"),
    (["--timeout", "inf"], "--timeout must be a number of seconds"),
    (["--timeout", "-1"], "--timeout must be a number of seconds"),
    (["--timeout", "10", "--retrycount", "100000"], "--timeout 10 s times --retrycount 100000 is more than a day"),
])
def test_check_openvpn_refuses_timeouts_that_are_no_time(args, expect):
    result = check_openvpn("127.0.0.1", *args)
    assert result.returncode == 3 and expect in first_line(result)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_probe_refuses_timeouts_that_are_no_time(value):
    result = ovpndiag("probe", "127.0.0.1", "-t", value)
    assert result.returncode == 2 and "--timeout must be a number of seconds" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_fifo_key_does_not_hang_the_check(tmp_path):
    import os

    fifo = tmp_path / "ta.key"
    os.mkfifo(fifo)
    result = ovpndiag("check", "127.0.0.1", "--tls-auth", fifo, "-t", "2", timeout=10)
    assert result.returncode == 3 and "is a pipe, not a regular file" in first_line(result)


def test_a_static_key_profile_is_refused_in_one_line(tmp_path):
    profile = tmp_path / "p2p.ovpn"
    profile.write_text("remote 127.0.0.1 1194\ndev tun\nsecret static.key\n")
    probed = ovpndiag("probe", "--config", profile)
    assert probed.returncode == 2 and "'secret' is static-key mode" in probed.stderr
    assert len(probed.stderr.splitlines()) == 1
    checked = ovpndiag("check", "--config", profile)
    assert checked.returncode == 3 and "nothing to probe" in first_line(checked)


@pytest.mark.parametrize("command", [["ovpndiag", "check"], ["check_openvpn"]])
def test_plugins_print_their_version(command):
    from ovpndiag import __version__

    for flag in ("-V", "--version"):
        argv = [sys.executable, "-m", "ovpndiag", *command[1:]] if command[0] == "ovpndiag" else [str(BIN / command[0])]
        result = subprocess.run(argv + [flag], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.split()[-1] == __version__, result.stdout + result.stderr
        assert len(result.stdout.splitlines()) == 1


def test_check_openvpn_takes_the_client_key_alone_as_the_classic_plugin_did(servers):
    """The classic plugin signed with --digest-key-client and, without a server key,
    validated the reply but its HMAC."""
    server = servers.get(proto="udp", wrapping="tls-auth", auth="SHA256")
    material = bytes.fromhex("".join(line for line in Path(TA).read_text().splitlines()
                                     if line and not line.startswith(("#", "-"))))
    ok = check_openvpn(server.host, "-p", server.port, "--digest", "sha256", "--digest-key-client",
                       material[192:224].hex())
    assert ok.returncode == 0 and "(tls-auth SHA256, HMAC not checked)" in first_line(ok), ok.stdout
    wrong = check_openvpn(server.host, "-p", server.port, "--digest", "sha256", "--digest-key-client",
                          material[64:96].hex(), "--retrycount", "1", "--timeout", "0.5")
    assert wrong.returncode == 2 and "no reply" in first_line(wrong)
    alone = check_openvpn(server.host, "--digest-key-server", material[64:96].hex())
    assert alone.returncode == 3 and "give --digest-key-client too" in first_line(alone)


# --- output that cannot be written ----------------------------------------------

PLUGINS = {"check": [sys.executable, "-m", "ovpndiag", "check"], "check_openvpn": [str(BIN / "check_openvpn")]}


def _run_with_stdout(argv, stdout):
    """Run with stdout sent to /dev/full (a full disk) or closed."""
    import shlex

    if stdout == "full":
        with open("/dev/full", "w") as full:
            return subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=30)
    return subprocess.run(["sh", "-c", f"exec {shlex.join(argv)} >&-"], stderr=subprocess.PIPE, text=True,
                          timeout=30)


@pytest.mark.parametrize("stdout,reason", [("full", "No space left on device"),
                                           ("closed", "standard output is closed")])
@pytest.mark.parametrize("plugin", ["check", "check_openvpn"])
def test_plugin_output_errors_are_unknown_in_one_line(plugin, stdout, reason):
    result = _run_with_stdout(PLUGINS[plugin] + ["127.0.0.1", "-p", str(free_port("udp"))], stdout)
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"{plugin if plugin == 'check_openvpn' else 'ovpndiag'}: error: cannot write the " \
                            f"output: {reason}\n"


@pytest.mark.parametrize("args", [["127.0.0.1", "--bogus"], ["-V"], ["--help"]])
@pytest.mark.parametrize("plugin", ["check", "check_openvpn"])
def test_plugin_usage_error_to_a_full_disk_is_unknown(plugin, args):
    result = _run_with_stdout(PLUGINS[plugin] + args, "full")
    assert result.returncode == 3 and "cannot write the output: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("stdout,reason", [("full", "No space left on device"),
                                           ("closed", "standard output is closed")])
def test_probe_output_errors_are_reported_as_such(stdout, reason):
    argv = [sys.executable, "-m", "ovpndiag", "probe", "127.0.0.1", "-p", str(free_port("udp"))]
    result = _run_with_stdout(argv, stdout)
    assert result.returncode == 74 and result.stderr == f"ovpndiag: error: cannot write the output: {reason}\n"


@pytest.mark.parametrize("stdout,reason", [("full", "cannot write: No space left on device"),
                                           ("closed", "cannot write the output: standard output is closed")])
def test_every_command_reports_output_errors_in_one_line(stdout, reason):
    """run() for the other commands too: a listing to a full disk or a closed stdout."""
    from captures import CAPTURES

    argv = [sys.executable, "-m", "ovpndiag", "dissect", str(CAPTURES / "udp-plain.pcap")]
    result = _run_with_stdout(argv, stdout)
    assert result.returncode == 74 and result.stderr == f"ovpndiag: error: {reason}\n"
