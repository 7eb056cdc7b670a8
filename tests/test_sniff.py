"""ovpndiag sniff on loopback, against a real OpenVPN client and server started here."""

import contextlib
import json
import signal
import subprocess
import sys
import time

from captures import key_path
from servers import OpenVPNClient, OpenVPNServer


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
    process = subprocess.Popen([sys.executable, "-m", "ovpndiag", "sniff", "-i", "lo", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the packet socket is open well before this
    return process


def test_sniff_sees_a_real_handshake_and_data_then_stops_on_ctrl_c():
    server = OpenVPNServer(proto="udp", wrapping="tls-auth", auth="SHA256").start()
    sniffer = start_sniff("-p", server.port, "--json", "--tls-auth", key_path("keys/ta.key"))
    with connected_client(server, sniffer):
        time.sleep(2.5)  # keepalive pings cross the data channel
        sniffer.send_signal(signal.SIGINT)
        out, err = sniffer.communicate(timeout=20)
    assert sniffer.returncode == 0, err
    packets = [json.loads(line) for line in out.splitlines()]
    opcodes = [p["opcode"] for p in packets]
    assert opcodes[:2] == ["P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2"]
    assert "P_DATA_V2" in opcodes and "P_CONTROL_V1" in opcodes
    control = [p for p in packets if "wrapping" in p]
    assert all(p["wrapping"] == "tls-auth" and p["hmac_size"] == 32 and p["hmac_valid"] for p in control)
    assert any(p.get("tls") == ["Client Hello"] for p in packets)
    assert "interrupted" in err and "OpenVPN packets in 1 session" in err
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
