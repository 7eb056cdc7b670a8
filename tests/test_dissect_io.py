"""dissect's input and output at their edges, on real captures: pcapng times far
from 1970 (against tshark), a capture on standard input, no capture file left by a
run that fails before its first packet, and a note when a key opens nothing."""

import datetime
import json
import re
import struct
import subprocess
import sys
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from capture_files import epb, idb, real_records, shb
from captures import CAPTURES, entry, key_path, openvpn_packets
from ovpndiag.pcapout import CaptureWriter
from servers import free_port


def ovpndiag(*args, stdin=None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "ovpndiag", *map(str, args)], capture_output=True,
                          stdin=stdin, cwd=cwd, timeout=timeout)


def text(result):
    return result.stdout.decode(), result.stderr.decode()


def tshark_fields(path, *fields):
    result = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|",
                             *(arg for field in fields for arg in ("-e", field))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------- times

def with_interface_options(name, tsresol, tsoffset, path):
    """A real classic capture as pcapng whose interface has ``if_tsresol`` and
    ``if_tsoffset``: the same instants, counted from ``tsoffset`` seconds in units of
    the resolution (rounded down), so every frame moves by about ``tsoffset``."""
    exponent = tsresol & 0x7F
    units = 2 ** exponent if tsresol & 0x80 else 10 ** exponent
    blocks = [shb(), idb(1, tsresol=tsresol, tsoffset=tsoffset)]
    for seconds, micros, frame in real_records(name):
        blocks.append(epb(0, (seconds * 1_000_000 + micros) * units // 1_000_000, frame))
    path.write_bytes(b"".join(blocks))
    return path


# (if_tsresol, if_tsoffset, the first frame's date as tshark shows it); the bundled
# udp-plain.pcap starts at 2026-11-25 13:37:27.359411.
FAR_TIMES = [
    (6, 10 ** 11, "5195-10-10 23:24:07"),                  # microseconds, a float is 15 us coarse here
    (9, -10 ** 11, "-1142-01-10 03:50:47"),               # nanoseconds, before year 1
    (0x80 | 20, 10 ** 12, "33715-08-22 15:24:07"),        # 2^-20 s, beyond datetime's year 9999
    (6, -3 * 10 ** 9, "1931-11-02 08:17:27"),             # before 1970, still a plain float
    (6, 10 ** 17, None),                                  # a year beyond a C int: tshark "Not representable"
]

_MONTHS = {name: number for number, name in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], start=1)}


def tshark_date(frame_time):
    """tshark's frame.time (``Oct 10, 5195 23:24:07.359411000 UTC``) as ovpndiag writes a
    date (``5195-10-10 23:24:07``), or None for "Not representable"."""
    match = re.match(r"(\w{3}) +(\d+), (-?\d+) (\d\d:\d\d:\d\d)", frame_time)
    if match is None:
        assert frame_time == "Not representable", frame_time
        return None
    month, day, year, clock = match.groups()
    return "%04d-%02d-%02d %s" % (int(year), _MONTHS[month], int(day), clock)


def tshark_epoch(text):
    """tshark 4.0 prints a negative time as its whole seconds (rounded down) and then the
    positive fraction after them: -1204386153.359411 is -1204386153 s + 0.359411 s."""
    whole, _, fraction = text.partition(".")
    return int(whole) + Decimal("0." + fraction)


@pytest.mark.parametrize("tsresol, tsoffset, first_date", FAR_TIMES)
def test_pcapng_times_far_from_1970_are_shown_as_tshark_shows_them(tmp_path, tsresol, tsoffset, first_date):
    capture = with_interface_options("udp-plain.pcap", tsresol, tsoffset, tmp_path / "far.pcapng")
    frames = tshark_fields(capture, "frame.number", "frame.time_relative", "frame.time_epoch", "frame.time")
    assert tshark_date(frames[0][3]) == first_date  # (the derived file is what the test means)

    # The listing: time since the first frame, to the microsecond, as tshark shows it.
    listing, errors = text(ovpndiag("dissect", capture))
    shown = {int(line.split()[0]): line.split()[1] for line in listing.splitlines()}
    assert len(shown) == len(frames) == 20, errors
    for number, relative, _epoch, _date in frames:
        expected = Decimal(relative).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)
        assert shown[int(number)] == str(expected), number

    # -V: every frame's date; --sessions: the session's first date and its duration.
    tree, errors = text(ovpndiag("dissect", "-V", capture))
    dates = re.findall(r"^Frame (\d+): .*\n(?:    .*\n)*?    Arrival Time: (.*)$", tree, re.M)
    assert len(dates) == 20, errors
    for (number, date), (_number, _relative, _epoch, frame_time) in zip(dates, frames):
        expected = tshark_date(frame_time)
        micros = re.search(r"\.(\d{6})\d* UTC", frame_time)
        assert date == (f"{expected}.{micros[1]} UTC" if expected else "time not representable"), number
    sessions, errors = text(ovpndiag("dissect", "--sessions", capture))
    span = Decimal(frames[-1][1]) - Decimal(frames[0][1])
    expected = first_date + " UTC" if first_date else "time not representable"
    assert f"from {expected} for {span.quantize(Decimal('0.001'))} s" in sessions, errors

    # JSON: the nearest number to tshark's epoch time (what any JSON reader makes of it).
    result = ovpndiag("dissect", "--json", capture)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(records) == 20
    for record, (_number, _relative, epoch, _date) in zip(records, frames):
        assert record["time"] == float(tshark_epoch(epoch))
    result = ovpndiag("dissect", "--json", "--sessions", capture)
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["first"] == records[0]["time"]
    assert summary["duration"] == float(span.quantize(Decimal("0.000001"), ROUND_HALF_EVEN))


def test_a_tls_crypt_v2_client_key_made_in_a_year_beyond_datetime_is_shown(tmp_path):
    """--sessions shows when the tls-crypt-v2 client key was made: 8 bytes from the wire."""
    from ovpndiag.render.sessions import session_text

    summary = json.loads(ovpndiag("dissect", "--sessions", "--json", CAPTURES / "udp-tls-crypt-v2.pcap",
                                  "--tls-crypt-v2", key_path("keys/tcv2-server.key")).stdout)
    made = summary["wkc_metadata"]["timestamp"]
    assert "made " + datetime.datetime.fromtimestamp(made, datetime.timezone.utc).strftime("%Y-%m-%d") \
        in session_text(1, summary)
    summary["wkc_metadata"]["timestamp"] = 2 ** 64 - 1  # what a forged WKc can say
    assert "made time not representable" in session_text(1, summary)
    summary["wkc_metadata"]["timestamp"] = 10 ** 12
    assert "made 33658-09-27 01:46:40 UTC" in session_text(1, summary)


def test_write_decrypted_keeps_far_times_as_editcap_does(tmp_path):
    """A classic pcap holds 32 bits of seconds: editcap (and so --write-decrypted) keeps
    those of a pcapng time beyond 2106, and the microseconds exactly."""
    capture = with_interface_options("udp-tls-crypt.pcap", 9, 10 ** 11, tmp_path / "far.pcapng")
    out = tmp_path / "clear.pcap"
    result = ovpndiag("dissect", capture, "--wrapping", "tls-crypt", "--tls-crypt", key_path("keys/tc.key"),
                      "--write-decrypted", out)
    assert result.returncode == 0, result.stderr
    converted = tmp_path / "editcap.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(capture), str(converted)], check=True, timeout=60)
    ours = tshark_fields(out, "frame.time_epoch")
    theirs = tshark_fields(converted, "frame.time_epoch")
    assert len(ours) == len(theirs) == 21 and ours == theirs
    assert "tls-crypt" not in text(ovpndiag("dissect", out))[0]  # decrypted: shown without the wrapping


# --------------------------------------------------------------------------- standard input

@pytest.mark.parametrize("name", ["udp-tls-auth-sha256.pcap", "tcp-pcapng.pcapng"])
def test_a_capture_on_standard_input(tmp_path, name):
    """``dissect -`` reads the capture from standard input, pcap or pcapng, and never from a
    file named "-" (nor with workers, which need a file to read)."""
    expected = ovpndiag("dissect", CAPTURES / name)
    assert expected.returncode == 0 and expected.stdout.count(b"\n") > 10
    (tmp_path / "-").write_bytes((CAPTURES / "udp-plain.pcap").read_bytes())  # a decoy
    for extra in ([], ["-j", "3"]):
        with open(CAPTURES / name, "rb") as stdin:
            result = ovpndiag("dissect", "-", *extra, stdin=stdin, cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected.stdout, b"")
    with open(CAPTURES / name, "rb") as stdin:  # - among files: read where it stands
        result = ovpndiag("dissect", "--json", CAPTURES / "udp-plain.pcap", "-", stdin=stdin, cwd=tmp_path)
    files = [json.loads(line)["file"] for line in result.stdout.splitlines()]
    assert result.returncode == 0 and files[0].endswith("udp-plain.pcap") and files[-1] == "-"


def test_standard_input_that_is_not_a_whole_capture(tmp_path):
    data = (CAPTURES / "udp-plain.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) - 20])
    with open(cut, "rb") as stdin:
        result = ovpndiag("dissect", "-", stdin=stdin)
    listing, errors = text(result)
    assert result.returncode == 1 and len(listing.splitlines()) == 19
    assert errors.startswith("ovpndiag: error: -: frame 20: record truncated") and errors.count("\n") == 1
    (tmp_path / "text").write_text("not a capture\n")
    with open(tmp_path / "text", "rb") as stdin:
        result = ovpndiag("dissect", "-", stdin=stdin)
    assert (result.returncode, text(result)) == (1, ("", "ovpndiag: error: -: not a pcap or pcapng file\n"))


def test_help_says_that_dash_is_standard_input():
    help_text = " ".join(text(ovpndiag("dissect", "--help"))[0].split())
    assert "A FILE of - reads a capture from standard input" in help_text


# --------------------------------------------------------------------------- no empty capture left

@pytest.mark.parametrize("bad", ["missing.pcap", "text", "empty"])
def test_write_decrypted_leaves_no_file_when_no_capture_could_be_read(tmp_path, bad):
    (tmp_path / "text").write_text("not a capture\n")
    (tmp_path / "empty").write_bytes(b"")
    out = tmp_path / "clear.pcap"
    result = ovpndiag("dissect", tmp_path / bad, "--tls-crypt", key_path("keys/tc.key"), "--write-decrypted", out)
    assert result.returncode == 1 and result.stderr.startswith(b"ovpndiag: error: ")
    assert not out.exists()


def test_write_decrypted_keeps_what_was_written_and_never_overwrites(tmp_path):
    out = tmp_path / "clear.pcap"
    result = ovpndiag("dissect", CAPTURES / "udp-tls-crypt.pcap", tmp_path / "missing.pcap",
                      "--tls-crypt", key_path("keys/tc.key"), "--write-decrypted", out)
    assert result.returncode == 1 and len(tshark_fields(out, "frame.number")) == 21  # the first file's
    out.write_bytes(b"theirs")
    result = ovpndiag("dissect", tmp_path / "missing.pcap", "--write-decrypted", out)
    assert result.returncode == 2 and out.read_bytes() == b"theirs"


def test_a_probe_that_sent_nothing_leaves_no_file(tmp_path):
    """TCP refused and an unresolvable host send nothing: no capture. A UDP probe sent
    its reset even unanswered: that is the capture."""
    out = tmp_path / "probe.pcap"
    result = ovpndiag("probe", "127.0.0.1", "-p", free_port("tcp"), "--proto", "tcp", "-t", "3", "--write", out)
    assert result.returncode == 1 and not out.exists()
    result = ovpndiag("probe", "host.invalid", "-t", "3", "--write", out)
    assert result.returncode == 1 and not out.exists()
    result = ovpndiag("probe", "127.0.0.1", "-p", free_port("udp"), "--retries", "0", "-t", "2", "--write", out)
    assert result.returncode == 1 and len(tshark_fields(out, "frame.number")) == 1


def test_pcap_writer_removes_its_file_only_for_a_failure_before_the_first_packet(tmp_path):
    def fail_inside(path, packets):
        writer = CaptureWriter(path)
        try:
            for _ in range(packets):
                writer.write_openvpn(1.5, "10.0.0.1", 40000, "10.0.0.2", 1194, "udp", b"\x38" + bytes(13))
            raise RuntimeError("the run failed")
        finally:
            writer.close()  # sees the exception on its way out

    with pytest.raises(RuntimeError):
        fail_inside(tmp_path / "none.pcap", 0)
    assert not (tmp_path / "none.pcap").exists()
    with pytest.raises(RuntimeError):
        fail_inside(tmp_path / "one.pcap", 1)
    assert len(tshark_fields(tmp_path / "one.pcap", "frame.number")) == 1
    with pytest.raises(ValueError), CaptureWriter(tmp_path / "with.pcap"):
        raise ValueError
    assert not (tmp_path / "with.pcap").exists()
    with CaptureWriter(tmp_path / "empty.pcap"):  # a run that succeeds with nothing to write: an empty capture
        pass
    assert (tmp_path / "empty.pcap").stat().st_size == 24 and tshark_fields(tmp_path / "empty.pcap", "frame.number") == []


# --------------------------------------------------------------------------- a key that opens nothing

def control_packets(name):
    return sum(1 for packet in openvpn_packets(entry(name)) if packet.data[0] >> 3 not in (6, 9))


@pytest.fixture(scope="module")
def fresh_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "fresh.key"
    subprocess.run(["openvpn", "--genkey", "secret", str(path)], check=True, capture_output=True, timeout=60)
    return path


@pytest.mark.parametrize("mode", [[], ["-V"], ["--json"], ["--sessions"], ["-j", "3"]])
def test_a_key_that_opens_nothing_is_said_once(fresh_key, mode):
    name = "udp-tls-crypt.pcap"
    for key in (key_path("keys/tc-wrong.key"), fresh_key):
        result = ovpndiag("dissect", CAPTURES / name, "--tls-crypt", key, *mode)
        assert result.returncode == 0
        assert text(result)[1] == (f"ovpndiag: note: the --tls-crypt key opened none of {control_packets(name)} "
                                   f"packets: it does not belong to this traffic\n")
    right = ovpndiag("dissect", CAPTURES / name, "--tls-crypt", key_path("keys/tc.key"), *mode)
    assert right.returncode == 0 and right.stdout and right.stderr == b""


def test_a_tls_auth_key_that_verifies_nothing(fresh_key, tmp_path):
    name = "udp-tls-auth-sha1.pcap"
    result = ovpndiag("dissect", CAPTURES / name, "--tls-auth", key_path("keys/ta-wrong.key"))
    assert text(result)[1] == (f"ovpndiag: note: the --tls-auth key verified none of {control_packets(name)} "
                               f"packets: it does not belong to this traffic\n")
    # The right key with the wrong direction pinned: the note names what was pinned.
    result = ovpndiag("dissect", CAPTURES / name, "--tls-auth", key_path("keys/ta.key"), "--key-direction", "0")
    assert text(result)[1].endswith("it does not belong to this traffic, or key-direction 0 is wrong for it\n")
    assert ovpndiag("dissect", CAPTURES / name, "--tls-auth", key_path("keys/ta.key")).stderr == b""
    # Several files: once for the file it does not match, named.
    profile = tmp_path / "client.ovpn"
    profile.write_text(f"client\nremote 127.0.0.1\ntls-auth {fresh_key} 1\n")
    result = ovpndiag("dissect", CAPTURES / name, CAPTURES / "udp-plain.pcap", "--config", profile)
    assert text(result)[1] == (f"ovpndiag: note: {CAPTURES / name}: the tls-auth key of {profile} verified none "
                               f"of {control_packets(name)} packets: it does not belong to this traffic, "
                               f"or key-direction 1 is wrong for it\n")


def test_a_tls_crypt_v2_key_that_opens_nothing(tmp_path):
    server_key = tmp_path / "server.key"
    subprocess.run(["openvpn", "--genkey", "tls-crypt-v2-server", str(server_key)], check=True,
                   capture_output=True, timeout=60)
    name = "udp-tls-crypt-v2.pcap"
    result = ovpndiag("dissect", CAPTURES / name, "--tls-crypt-v2", server_key)
    assert text(result)[1] == (f"ovpndiag: note: the --tls-crypt-v2 key opened none of {control_packets(name)} "
                               f"packets: it does not belong to this traffic\n")
    client_key = tmp_path / "client.key"  # a client key of that other server
    subprocess.run(["openvpn", "--genkey", "tls-crypt-v2-client", str(client_key), "--tls-crypt-v2", str(server_key)],
                   check=True, capture_output=True, timeout=60)
    result = ovpndiag("dissect", CAPTURES / name, "--tls-crypt-v2", client_key)
    assert text(result)[1] == (f"ovpndiag: note: the --tls-crypt-v2 key opened none of {control_packets(name)} "
                               f"packets: it does not belong to this traffic\n")
    for right in ("keys/tcv2-server.key", "keys/tcv2-client.key"):
        assert ovpndiag("dissect", CAPTURES / name, "--tls-crypt-v2", key_path(right)).stderr == b""
