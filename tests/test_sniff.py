"""ovpndiag sniff on loopback, against a real OpenVPN client and server started here,
and under load from real data packets replayed at 150,000 per second."""

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from captures import key_path
from servers import OpenVPNClient, OpenVPNServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sniff_load  # noqa: E402  (the benchmark's sender: real P_DATA_V2 packets at a set rate)


@contextlib.contextmanager
def connected_client(server, sniffer):
    """A real client connected to ``server`` while ``sniffer`` watches; everything
    is stopped afterwards, whatever happened."""
    client = None
    try:
        client = OpenVPNClient(server).start()
        yield client
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
        if client:
            client.stop()
        server.stop()


def start_sniff(*args):
    """A sniff process, returned once it says it listens (its first stderr line)."""
    process = subprocess.Popen([sys.executable, "-m", "ovpndiag", "sniff", "-i", "lo", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    assert "listening on lo" in first, first + process.stderr.read()
    return process


def summary_counts(err):
    """(frames, OpenVPN packets, dropped by kernel) from sniff's closing line."""
    found = re.search(r"(\d+) frames, (\d+) OpenVPN packets .*; (\d+) packets dropped by kernel", err)
    assert found, err
    return tuple(map(int, found.groups()))


def test_sniff_sees_a_real_handshake_and_data_then_stops_on_ctrl_c():
    server = OpenVPNServer(proto="udp", wrapping="tls-auth", auth="SHA256").start()
    sniffer = start_sniff("-p", server.port, "--json", "--tls-auth", key_path("keys/ta.key"))
    with connected_client(server, sniffer):
        time.sleep(2.5)  # keepalive pings cross the data channel
        sniffer.send_signal(signal.SIGINT)
        out, err = sniffer.communicate(timeout=20)
    assert sniffer.returncode == 0, err
    # (OpenVPN on any other port of lo - another test's server - is shown too: left out here.)
    packets = [p for p in map(json.loads, out.splitlines()) if server.port in (p["sport"], p["dport"])]
    opcodes = [p["opcode"] for p in packets]
    assert opcodes[:2] == ["P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2"]
    assert "P_DATA_V2" in opcodes and "P_CONTROL_V1" in opcodes
    control = [p for p in packets if "wrapping" in p]
    assert all(p["wrapping"] == "tls-auth" and p["hmac_size"] == 32 and p["hmac_valid"] for p in control)
    assert any(p.get("tls") == ["Client Hello"] for p in packets)
    assert len({p["session_id"] for p in packets if p["sport"] != server.port and "session_id" in p}) == 1
    assert "interrupted" in err and re.search(r"OpenVPN packets in \d+ sessions?;", err)
    assert "Traceback" not in err


def test_sniff_stops_after_count_and_writes_what_it_saw(tmp_path):
    server = OpenVPNServer(proto="tcp").start()
    out_file = tmp_path / "live.pcap"
    sniffer = start_sniff("-p", server.port, "-c", "4", "--write", out_file, "--duration", "30")
    with connected_client(server, sniffer):
        out, err = sniffer.communicate(timeout=30)
    lines = out.splitlines()
    assert sniffer.returncode == 0 and len(lines) == 4, err
    assert "P_CONTROL_HARD_RESET_CLIENT_V2" in lines[0] and " TCP " in lines[0]
    replay = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", str(out_file), "-p", str(server.port)],
                            capture_output=True, text=True, timeout=60)
    # the same packets, read back from the file (frame numbers and times differ)
    assert replay.returncode == 0
    assert [line.split()[2:] for line in replay.stdout.splitlines()[:4]] == [line.split()[2:] for line in lines]


def test_sniff_without_the_right_to_capture_says_so():
    result = subprocess.run(["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-m",
                             "ovpndiag", "sniff", "-i", "lo", "--duration", "1"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "needs root (or CAP_NET_RAW)" in result.stderr
    assert "Traceback" not in result.stderr


def test_sniff_on_a_missing_interface():
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "sniff", "-i", "nosuchif0", "--duration", "1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "no such interface: nosuchif0" in result.stderr


def test_sniff_stopped_by_sigterm_writes_a_whole_capture_and_its_summary(tmp_path):
    """As `timeout` and service managers stop it: the same as Ctrl-C."""
    server = OpenVPNServer(proto="udp").start()
    out_file = tmp_path / "live.pcap"
    sniffer = start_sniff("-p", server.port, "--write", out_file)
    with connected_client(server, sniffer):
        time.sleep(1.5)  # the handshake, then keepalive pings
        sniffer.send_signal(signal.SIGTERM)
        out, err = sniffer.communicate(timeout=20)
    assert sniffer.returncode == 0, err
    frames, shown, dropped = summary_counts(err)
    assert err.startswith("interrupted: ") and dropped == 0 and shown >= 10 and "Traceback" not in err
    assert len(out.splitlines()) == shown
    # tshark reads the written capture to its end: every frame sniff counted, none cut
    read = subprocess.run(["tshark", "-r", str(out_file), "-T", "fields", "-e", "frame.number"],
                          capture_output=True, text=True, timeout=60)
    assert read.returncode == 0 and "tshark:" not in read.stderr, read.stderr  # e.g. "... cut short in the middle"
    assert len(read.stdout.split()) == frames


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_sniff_refuses_a_duration_that_is_not_a_time(value):
    from ovpndiag.cli import main

    result = CliRunner().invoke(main, ["sniff", "-i", "lo", "--duration", value])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"Error: --duration must be a number of seconds above 0, not "
                                          f"{float(value)}"]


@pytest.mark.parametrize("hint", [True, False], ids=["with -p", "no hint"])
def test_sniff_started_on_running_tunnels_shows_their_packets_from_the_first(tmp_path, hint):
    """sniff started after the tunnel is up (no handshake to see): every OpenVPN packet
    it captured is shown, from the first one; the written capture says which they were."""
    server = OpenVPNServer(proto="udp", wrapping="tls-crypt", extra=["--ping", "1"]).start()
    out_file = tmp_path / "live.pcap"
    sniffer = None
    try:
        client = OpenVPNClient(server).start()
        time.sleep(0.5)  # up and past the handshake's last packets
        sniffer = start_sniff(*(["-p", server.port] if hint else []), "--duration", "2.5", "--write", out_file)
        out, err = sniffer.communicate(timeout=30)
    finally:
        if sniffer and sniffer.poll() is None:
            sniffer.kill()
        client.stop()
        server.stop()
    assert sniffer.returncode == 0, err
    captured = subprocess.run(["tshark", "-r", str(out_file), "-Y", f"udp.port == {server.port}",
                               "-T", "fields", "-e", "frame.number"], capture_output=True, text=True, timeout=60)
    frames = [int(number) for number in captured.stdout.split()]
    assert len(frames) >= 4  # --ping 1 on both sides: a keepalive each way each second
    shown = [line.split()[0] for line in out.splitlines() if f":{server.port} " in line]
    assert [int(number) for number in shown] == frames, out
    assert all("P_DATA_V2" in line for line in out.splitlines() if f":{server.port} " in line)


def _sniff_under_load(count, rate, *options):
    """Send ``count`` real-shaped P_DATA_V2 packets at ``rate``/s on lo while sniff
    watches; (sent, shown, frames, dropped, stderr) once sniff has stopped."""
    client, server = sniff_load.bound_socket(), sniff_load.bound_socket()
    port = server.getsockname()[1]
    payloads = sniff_load.packets(count)
    sniffer = start_sniff("-p", port, *options)
    try:
        sent, _seconds = sniff_load.send(payloads, rate, client, server)
        time.sleep(0.2)
        sniffer.send_signal(signal.SIGINT)
        out, err = sniffer.communicate(timeout=60)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
        client.close()
        server.close()
    assert sniffer.returncode == 0, err
    shown = sum(1 for line in out.splitlines() if "P_DATA_V2" in line and f":{port} " in line)
    frames, _packets, dropped = summary_counts(err)
    return sent, shown, frames, dropped, err


def test_sniff_keeps_up_with_150000_packets_per_second():
    sent, shown, frames, dropped, err = _sniff_under_load(150_000, 150_000)
    assert shown <= sent  # (the loopback's outgoing copy of each packet is not shown twice)
    assert shown >= 0.95 * sent, err
    # whatever was not shown was reported dropped (the count is the interface's: other tests add to it)
    assert shown + dropped >= sent, err


def test_sniff_reports_what_the_kernel_dropped_when_its_buffer_overflows():
    """A 1 MiB buffer holds a few thousand packets: a burst at full speed overflows it."""
    sent, shown, frames, dropped, err = _sniff_under_load(100_000, 1_000_000, "--buffer", "1")
    assert dropped > 0 and shown < sent, err
    assert shown + dropped >= sent, err
    assert "a larger --buffer" in err


def _wait_for_line(process, text, seconds):
    """The first output line holding ``text`` within ``seconds`` while ``process`` runs, or None."""
    deadline, pending = time.monotonic() + seconds, b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        for line in pending.decode(errors="replace").splitlines():
            if text in line:
                return line
    return None


def test_sniff_shows_a_short_burst_on_a_quiet_interface_while_it_runs():
    """Three data packets on ports nothing says are OpenVPN, then silence: too few to
    decide at once, so the reader holds them for HOLD_TIME of capture time - and a quiet
    interface brings no packet to move that clock on. sniff tells the reader the time,
    so they are shown while it runs, not only when it stops."""
    from ovpndiag.dissect.reader import HOLD_TIME

    client, server = sniff_load.bound_socket(), sniff_load.bound_socket()
    port = server.getsockname()[1]
    sniffer = start_sniff()
    try:
        sniff_load.send(sniff_load.packets(3), 1000, client, server)
        line = _wait_for_line(sniffer, f":{port} ", HOLD_TIME + 1.5)
        running = sniffer.poll() is None
        sniffer.send_signal(signal.SIGINT)
        _out, err = sniffer.communicate(timeout=20)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
        client.close()
        server.close()
    assert running and line is not None, err
    assert "P_DATA_V2" in line


def test_sniff_stopped_twice_stops_at_once_and_counts_what_it_left_unread():
    """-V is slow (a field tree per packet): a burst leaves most of it in the ring. The
    first SIGINT would show it all; the second stops at once, and the summary counts
    what was never read, so read + dropped + unread still accounts for every packet."""
    client, server = sniff_load.bound_socket(), sniff_load.bound_socket()
    port = server.getsockname()[1]
    sniffer = start_sniff("-p", port, "-V")
    try:
        sent, _seconds = sniff_load.send(sniff_load.packets(50_000), 1_000_000, client, server)
        time.sleep(0.3)
        sniffer.send_signal(signal.SIGINT)
        time.sleep(0.2)
        stopped = time.monotonic()
        sniffer.send_signal(signal.SIGINT)
        _out, err = sniffer.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
        client.close()
        server.close()
    assert sniffer.returncode == 0, err
    frames, _packets, dropped = summary_counts(err)
    unread = re.search(r"; (\d+) captured packets not read \(stopped at once", err)
    assert unread and int(unread.group(1)) > 0, err
    assert frames + dropped + int(unread.group(1)) >= sent, err
    assert took < 5, err
