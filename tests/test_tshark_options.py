"""The rest of what tshark users expect: -r, .gz captures, --color and NO_COLOR, the
progress line's share of the file, and sniff -f (a capture filter run in the kernel)."""

import gzip
import io
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from captures import ALL_CAPTURES, CAPTURES, key_path
from ovpndiag.cli import main
from servers import OpenVPNClient, OpenVPNServer


def ovpndiag(*args, **options):
    return subprocess.run([sys.executable, "-m", "ovpndiag", *map(str, args)], capture_output=True, timeout=120,
                          **options)


# --- -r and .gz --------------------------------------------------------------------------

def test_r_names_the_files_as_the_arguments_do():
    a, b = CAPTURES / "udp-plain.pcap", CAPTURES / "tcp-tls-auth.pcap"
    expected = ovpndiag("dissect", a, b)
    assert ovpndiag("dissect", "-r", a, "-r", b).stdout == expected.stdout == ovpndiag("dissect", "-r", a, b).stdout
    assert expected.stdout.count(b"==> ") == 2
    nothing = ovpndiag("dissect")
    assert nothing.returncode == 2 and nothing.stderr.decode().startswith("Error: no capture to read")


def in_process(*args, input=None):
    result = CliRunner().invoke(main, list(map(str, args)), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("capture", ALL_CAPTURES, ids=[c["file"] for c in ALL_CAPTURES])
def test_a_gzip_compressed_capture_reads_as_the_capture(capture, tmp_path):
    plain = CAPTURES / capture["file"]
    packed = tmp_path / (capture["file"] + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for mode in ([], ["--json"]):
        expected = in_process("dissect", plain, *mode)
        got = in_process("dissect", packed, *mode, "-j", "2")  # (workers read the .gz too)
        assert got.exit_code == expected.exit_code == 0
        assert got.stdout == expected.stdout and got.stderr == expected.stderr.replace(str(plain), str(packed))
    piped = ovpndiag("dissect", "-", input=packed.read_bytes())  # (a real pipe)
    assert piped.returncode == 0 and piped.stdout.decode() == in_process("dissect", plain).stdout


def test_a_truncated_gz_shows_what_it_holds_then_one_line_and_exit_status_1(tmp_path):
    plain = (CAPTURES / "udp-tls-auth-sha512.pcap").read_bytes()
    whole = gzip.compress(plain)
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(whole[:len(whole) * 2 // 3])
    result = ovpndiag("dissect", cut)
    lines = result.stdout.decode().splitlines()
    full = ovpndiag("dissect", CAPTURES / "udp-tls-auth-sha512.pcap").stdout.decode().splitlines()
    assert result.returncode == 1 and 0 < len(lines) < len(full) and lines == full[:len(lines)]
    assert re.fullmatch(rf"ovpndiag: error: {re.escape(str(cut))}: compressed capture truncated \(the gzip stream "
                        r"ends after [\d,]+ bytes of capture\)\n", result.stderr.decode()), result.stderr
    corrupt = tmp_path / "corrupt.pcap.gz"
    corrupt.write_bytes(whole[:200] + bytes(50) + whole[250:])
    damaged = ovpndiag("dissect", corrupt)
    assert damaged.returncode == 1 and len(damaged.stderr.splitlines()) == 1
    assert b"Traceback" not in damaged.stderr and str(corrupt).encode() in damaged.stderr


# --- colour ----------------------------------------------------------------------------

def on_a_terminal(args, env=None):
    """stdout (and stderr) on a pseudo-terminal: what the user sees."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ovpndiag", *map(str, args)], stdout=slave, stderr=slave,
                               env={**os.environ, **(env or {})})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # (the other end closed)
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=60)
    os.close(master)
    return seen.decode()


ANSI = "\033["
COLOUR = re.compile(r"\033\[[\d;]*m")  # (SGR: a colour or style; not the progress line's erase)


def coloured(text):
    return COLOUR.search(text) is not None
WRONG_KEY = [CAPTURES / "fail-tls-auth-wrong-key.pcap", "--tls-auth", key_path("keys/ta.key"), "-c", "3"]


def test_the_listing_is_coloured_on_a_terminal_unless_no_color_or_never():
    assert ANSI + "31m" in on_a_terminal(["dissect", *WRONG_KEY])  # HMAC BAD in red
    assert not coloured(on_a_terminal(["dissect", *WRONG_KEY], {"NO_COLOR": "1"}))
    assert not coloured(on_a_terminal(["dissect", *WRONG_KEY, "--color", "never"]))
    assert ANSI + "31m" in on_a_terminal(["dissect", *WRONG_KEY, "--color", "always"], {"NO_COLOR": "1"})
    assert coloured(on_a_terminal(["dissect", *WRONG_KEY], {"NO_COLOR": ""}))  # set but empty: no effect


def test_in_a_pipe_only_always_colours():
    assert not coloured(ovpndiag("dissect", *WRONG_KEY).stdout.decode())
    piped = ovpndiag("dissect", *WRONG_KEY, "--color", "always").stdout.decode()
    assert ANSI + "31m" in piped and "BAD" in piped
    assert not coloured(ovpndiag("dissect", *WRONG_KEY, "--json", "--color", "always").stdout.decode())


def test_probe_reports_follow_color_and_no_color():
    closed = ["probe", "127.0.0.1", "-p", "9", "-t", "2", "--retries", "0"]  # nothing listens: FAILED, in red
    assert coloured(on_a_terminal(closed))
    assert not coloured(on_a_terminal(closed, {"NO_COLOR": "1"}))
    assert coloured(ovpndiag(*closed, "--color", "always").stdout.decode())
    assert not coloured(ovpndiag(*closed).stdout.decode())


# --- progress ------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_says_how_far_into_the_file_and_never_in_a_pipe(monkeypatch, tmp_path):
    from ovpndiag.dissect import pipeline

    from capture_files import pcap, real_records

    frames = real_records("udp-tls-crypt.pcap")
    big = tmp_path / "big.pcap"
    big.write_bytes(pcap(frames * 3000))  # (several MiB: the reader reads 1 MiB at a time)
    monkeypatch.setattr(pipeline, "PROGRESS_EVERY", 1000)
    for path, jobs in ((big, "1"), (tmp_path / "big.pcap.gz", "1"), (big, "2")):
        if path.suffix == ".gz":  # the share of a .gz is of its compressed bytes
            path.write_bytes(gzip.compress(big.read_bytes()))
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        with pytest.raises(SystemExit) as leaving:
            main(["dissect", str(path), "-j", jobs], standalone_mode=False)
        assert leaving.value.code == 0
        shares = [int(share) for share in re.findall(r"\r[\d,]+ frames, [\d,]+ OpenVPN packets "
                                                     r"\((\d+)% of the file\) ", terminal.getvalue())]
        if jobs == "2":  # the workers' (the slowest one's), read from /proc: they read ahead of the merge
            assert shares and shares == sorted(shares) and shares[-1] <= 100, shares
            continue
        assert len(shares) >= 5 and shares == sorted(shares) and shares[-1] <= 100, shares
        if path == big:
            assert shares[0] < 25 and shares[-1] > 75 and len(set(shares)) >= 5
    monkeypatch.undo()
    assert ovpndiag("dissect", big).stderr == b""  # stderr not a terminal: no progress, no tally


# --- sniff -f ----------------------------------------------------------------------------

def start_sniff(*args):
    process = subprocess.Popen([sys.executable, "-m", "ovpndiag", "sniff", "-i", "lo", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    assert "listening on lo" in first, first + process.stderr.read()
    return process


def test_sniff_f_filters_in_the_kernel_what_is_never_copied_nor_counted():
    server = OpenVPNServer(proto="udp").start()
    port = server.port
    taking = start_sniff("-p", port, "--json", "-f", f"udp port {port}")
    leaving = start_sniff("-p", port, "--json", "-f", f"udp and not port {port}")
    resets = start_sniff("-p", port, "-Y", "opcode in {P_CONTROL_HARD_RESET_CLIENT_V2 P_CONTROL_HARD_RESET_SERVER_V2}",
                         "-T", "fields", "-e", "opcode", "-e", "sport", "-e", "dport")
    sniffers = (taking, leaving, resets)
    client = None
    try:
        client = OpenVPNClient(server).start()
        time.sleep(1.5)  # the handshake, then keepalive pings
        for sniffer in sniffers:
            sniffer.send_signal(signal.SIGINT)
        taken, taken_err = taking.communicate(timeout=20)
        left, left_err = leaving.communicate(timeout=20)
        reset_lines, _ = resets.communicate(timeout=20)
    finally:
        for sniffer in sniffers:
            if sniffer.poll() is None:
                sniffer.kill()
        if client:
            client.stop()
        server.stop()
    import json

    packets = [json.loads(line) for line in taken.splitlines()]
    assert len(packets) >= 10 and all(port in (p["sport"], p["dport"]) for p in packets)
    assert packets[0]["opcode"] == "P_CONTROL_HARD_RESET_CLIENT_V2"
    frames = int(re.search(r"(\d+) frames", taken_err)[1])
    assert frames == len(packets)  # nothing else on that port: every frame let in is one shown
    assert not any(port in (p["sport"], p["dport"]) for p in map(json.loads, left.splitlines()))
    # -Y and -T fields live too: the session's two resets, nothing else of it
    ours = [line.split("\t") for line in reset_lines.splitlines() if str(port) in line.split("\t")[1:]]
    assert [row[0] for row in ours] == ["P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2"]
    assert all(row[0].startswith("P_CONTROL_HARD_RESET_") for row in map(str.split, reset_lines.splitlines()))


@pytest.mark.parametrize("expression, message", [
    ("udp portt 1194", "can't parse filter expression: syntax error"),
    ("port 99999", "illegal port number 99999 > 65535"),
])
def test_sniff_refuses_a_bad_capture_filter_in_one_line_with_exit_status_2(expression, message):
    done = ovpndiag("sniff", "-i", "lo", "-f", expression, "--duration", "1")
    err = done.stderr.decode()
    assert done.returncode == 2 and err == f"Error: -f: bad capture filter '{expression}': {message}\n"


def test_the_capture_filter_compiles_the_same_by_libpcap_and_by_tcpdump(monkeypatch, tmp_path):
    """libpcap comes with tshark, tcpdump is the fallback (CI installs both, so both are compared)."""
    import shutil

    from ovpndiag.capture.live import CaptureFilterError, _tcpdump_compile, compile_capture_filter

    for expression in ("udp port 1194", "tcp and host 10.1.2.3", "ip6 and udp dst portrange 1000-2000"):
        program = compile_capture_filter(expression)
        assert len(program) > 3 and program[-1][0] == 0x06  # (ends in a return)
        assert shutil.which("tcpdump"), "CI installs tcpdump (README's second command)"
        assert program == _tcpdump_compile(expression)
    monkeypatch.setenv("PATH", str(tmp_path))  # no tcpdump
    with pytest.raises(CaptureFilterError, match="-f needs libpcap or tcpdump"):
        _tcpdump_compile("udp")


def test_a_workers_share_of_the_file_is_read_from_proc():
    """With workers the parent reads nothing: the share is where the workers' reads are."""
    from ovpndiag.capture.readshare import ReadShare

    path = CAPTURES / "udp-tls-crypt.pcap"
    size = path.stat().st_size
    readers = [subprocess.Popen([sys.executable, "-c", f"import time; f = open({str(path)!r}, 'rb', buffering=0); "
                                 f"f.read({part}); print(flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
               for part in (size // 3, size // 2)]
    try:
        for reader in readers:
            reader.stdout.readline()
        assert ReadShare([reader.pid for reader in readers], path).share() == (size // 3) / size  # the slowest
        assert ReadShare([readers[1].pid], path).share() == (size // 2) / size
        assert ReadShare([os.getpid()], path).share() is None  # (this process has not opened it)
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()
