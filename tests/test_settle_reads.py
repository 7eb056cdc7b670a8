"""settle reads the analyses once where it can (what comes before the first open-ended
one goes out as it is read; what follows is held, up to settle.HOLD) and twice beyond:
the same analyses either way, on every bundled capture."""

import copy

import pytest

from captures import ALL_CAPTURES, CAPTURES
from ovpndiag import analyze
from ovpndiag.analyze import settle
from ovpndiag.dissect.pipeline import COUNT

FILES = [(entry["file"], entry["port"]) for entry in ALL_CAPTURES]


class Reads(list):
    """A sequence that counts how often it is read through."""

    reads = 0

    def __iter__(self):
        self.reads += 1
        return super().__iter__()


def unsettled(name, port):
    """The capture's analyses as the readers give them, before settle."""
    with analyze.open([str(CAPTURES / name)], ports=[port], jobs=1) as run:
        capture = next(iter(run))
        for _packets in capture.batches(COUNT):
            pass
        return [copy.deepcopy(analysis) for analysis in capture.summaries()]


def settled(raw, hold, monkeypatch):
    monkeypatch.setattr(settle, "HOLD", hold)
    analyses = Reads(copy.deepcopy(raw))
    return list(settle.settle(analyses)), analyses.reads


@pytest.mark.parametrize("name, port", FILES)
def test_held_or_read_again_the_analyses_are_the_same(name, port, monkeypatch):
    raw = unsettled(name, port)
    expected, reads = settled(raw, 10 ** 9, monkeypatch)
    assert reads == 1
    for hold in (0, 1, 2):
        found, reads = settled(raw, hold, monkeypatch)
        assert found == expected, hold
        held = len(raw) - next((at for at, analysis in enumerate(raw) if "open_end" in analysis), len(raw))
        assert reads == (1 if held <= hold else 2)


@pytest.mark.parametrize("name", ["udp-try-keys.pcap", "fail-expired-server-cert.pcap"])
def test_captures_with_settled_and_unsettled_sessions_in_turn_are_among_them(name):
    """(So that going out at once, holding and reading again all meet analyses that need no
    settling: one after an open-ended one, or before it.)"""
    port = next(p for n, p in FILES if n == name)
    kinds = ["open_end" in analysis for analysis in unsettled(name, port)]
    assert True in kinds and False in kinds[kinds.index(True):] + kinds[:kinds.index(True)]


@pytest.mark.parametrize("hold", [0, 1, 3])
def test_workers_summaries_read_again_settle_alike(hold, monkeypatch):
    """Workers' summaries (unpacked afresh at each read) read again from the first one held."""
    path = str(CAPTURES / "udp-try-keys.pcap")
    expected = list(analyze.open([path], ports=[2194], jobs=2).sessions())
    monkeypatch.setattr(settle, "HOLD", hold)
    assert list(analyze.open([path], ports=[2194], jobs=2).sessions()) == expected
