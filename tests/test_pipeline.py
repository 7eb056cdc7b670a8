"""ovpndiag.dissect.open, the library's way in: the same packets, lines, sessions and
counts as `ovpndiag dissect`, with workers too; errors in what the user gives raise at
once, a damaged capture does not raise (it says what is wrong after what was readable)."""

import json
import subprocess
import sys

import pytest

from captures import CAPTURES, key_path
from ovpndiag import dissect
from ovpndiag.keys import KeyFileError
from ovpndiag.render.jsonl import packet_json
from ovpndiag.settings import SettingsError

PLAIN = CAPTURES / "udp-plain.pcap"
TLS_AUTH = CAPTURES / "udp-tls-auth-sha512.pcap"


def command(*args):
    result = subprocess.run([sys.executable, "-m", "ovpndiag", "dissect", *map(str, args)], capture_output=True,
                            text=True, timeout=120)
    return result.stdout.splitlines()


def test_records_are_what_json_shows():
    with dissect.open([TLS_AUTH], tls_auth=key_path("keys/ta.key"), ports=[12345]) as run:
        shown = [packet_json(record) for record in run.records()]
    assert shown == command(TLS_AUTH, "--tls-auth", key_path("keys/ta.key"), "-p", "12345", "--json")
    assert all(json.loads(line)["hmac_valid"] is True for line in shown if '"hmac_valid"' in line)


def test_lines_are_the_listing_and_workers_give_the_same(tmp_path):
    big = tmp_path / "big.pcap"
    frames = PLAIN.read_bytes()[24:]
    big.write_bytes(PLAIN.read_bytes()[:24] + frames * 3)  # the same session three times (one flow)
    expected = command(big)
    with dissect.open(big, jobs=1) as run:
        assert list(run.lines()) == expected
        alone = next(iter(run))
        assert list(alone.batches(dissect.LISTING)) and alone.frames > len(expected) / 2
    with dissect.open(big, jobs=2) as run:
        capture = next(iter(run))
        assert capture._jobs(dissect.LISTING) == 2  # (workers asked for: the file is small)
        assert [line for batch in capture.batches(dissect.LISTING) for line in batch] == expected
        assert capture.counted and capture.error is None
        assert (capture.frames, capture.skipped, capture.tally) == (alone.frames, alone.skipped, alone.tally)


def test_sessions_and_counts_are_what_dissect_sessions_says():
    with dissect.open([PLAIN, TLS_AUTH], ports=[12345]) as run:
        summaries = list(run.sessions())
    expected = [json.loads(line) for line in command(PLAIN, TLS_AUTH, "-p", "12345", "--sessions", "--json")]
    assert [{k: v for k, v in s.items() if k != "file"} for s in expected] == summaries
    with dissect.open(PLAIN) as run:
        capture = next(iter(run))
        packets = sum(len(batch) for batch in capture.batches())
    tally = command(PLAIN, "--sessions")[-1]
    assert tally.startswith(f"{PLAIN}: {capture.frames:,} frames, {packets:,} OpenVPN packets; "
                            f"skipped: {capture.tally.get('other', 0):,} payloads of other protocols")


def test_a_damaged_capture_delivers_what_is_readable_then_says_why(tmp_path):
    cut = tmp_path / "cut.pcap"
    data = PLAIN.read_bytes()
    cut.write_bytes(data[:len(data) // 2] + b"\xff" * 7)
    with dissect.open(cut) as run:
        capture = next(iter(run))
        records = [record for batch in capture.batches() for record in batch]
        assert records and capture.error and str(cut) in capture.error
        assert run.failed
    assert [record.frame for record in records] == [int(line.split()[0]) for line in command(cut)]


@pytest.mark.parametrize("options,error", [
    ({"tls_auth": "/no/such.key"}, KeyFileError),
    ({"auth": "SHA999"}, SettingsError),
])
def test_what_the_user_gives_wrong_raises_at_open(options, error):
    with pytest.raises(error):
        dissect.open(PLAIN, **options)


def test_write_decrypted_refuses_an_existing_file_and_removes_a_failed_one(tmp_path):
    existing = tmp_path / "out.pcap"
    existing.write_bytes(b"mine")
    with pytest.raises(OSError):
        dissect.open(PLAIN, write_decrypted=existing)
    assert existing.read_bytes() == b"mine"
    fresh, kept = tmp_path / "fresh.pcap", tmp_path / "kept.pcap"
    with pytest.raises(RuntimeError):
        with dissect.open(PLAIN, write_decrypted=fresh):
            raise RuntimeError("the caller failed before a packet was written")
    assert not fresh.exists()
    with pytest.raises(RuntimeError):
        with dissect.open(PLAIN, write_decrypted=kept) as run:
            next(run.records())
            raise RuntimeError("the caller failed after")
    assert kept.stat().st_size > 24  # (what was written stays: a capture cut short)
