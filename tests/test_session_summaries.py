"""--sessions' summaries once their flow is gone (ovpndiag/dissect/sessions.py): a finished
session packs its summary small and gives back exactly the dict it packed, and a reader
that forgets idle flows shows the same summaries, in the same order, as one that keeps them."""

import sys

import pytest

from captures import ALL_CAPTURES, CAPTURES, no_openvpn_packets
from ovpndiag.capture.datagrams import read_transport
from ovpndiag.dissect import reader as reader_module
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.dissect.sessions import FinishedSession, Summaries

NAMES = [c["file"] for c in ALL_CAPTURES if c.get("program") != "openvpn --secret"  # (static key: no sessions)
         and not no_openvpn_packets(c)]


def summaries(name, monkeypatch=None, idle=None):
    """The reader's summary dicts of a capture; with ``idle``, flows idle that long (capture
    seconds) are forgotten, looked for at every datagram."""
    if idle is not None:
        monkeypatch.setattr(reader_module, "FLOW_IDLE", idle)
        monkeypatch.setattr(reader_module, "EXPIRY_CHECK", 1)
    entry = next(c for c in ALL_CAPTURES if c["file"] == name)
    reader = Reader(Options(ports=(entry["port"],)))
    for datagram in read_transport(str(CAPTURES / name)):
        reader.feed(datagram)
    reader.finish()
    return reader, list(reader.summaries())


@pytest.mark.parametrize("name", NAMES)
def test_a_finished_session_gives_back_its_summary_exactly(name):
    _, shown = summaries(name)
    assert shown, name
    for summary in shown:
        again = FinishedSession(summary).to_dict()
        assert again == summary
        assert repr(again) == repr(summary)  # the same key order, nested tables too


@pytest.mark.parametrize("name", ["fail-tls-auth-wrong-key.pcap", "fail-untrusted-cert-tcp.pcap",
                                  "fail-untrusted-cert.pcap", "udp-try-keys.pcap", "udp-reneg.pcap"])
def test_forgetting_idle_flows_changes_no_summary(name, monkeypatch):
    _, kept = summaries(name)
    reader, forgotten = summaries(name, monkeypatch, idle=0.5)
    if name.startswith("fail-"):  # (each attempt is a flow of its own, a second after the last)
        assert reader.ended and all(isinstance(s, FinishedSession) for s in reader.ended)
    assert [repr(s) for s in forgotten] == [repr(s) for s in kept]


def test_a_finished_session_costs_a_few_hundred_bytes():
    _, shown = summaries("udp-tls-auth-sha256.pcap")
    summary = shown[0]
    finished = FinishedSession(summary)
    cost = sys.getsizeof(finished) + _deep_size(finished.values)  # (its key tuples are shared)
    assert cost < 400, cost
    assert cost * 4 < _deep_size(summary)  # what an expired flow's session cost before: its dict


def test_summaries_are_made_as_they_are_read():
    made = []

    class Counted:
        def __init__(self, number):
            self.number = number

        def to_dict(self):
            made.append(self.number)
            return {"n": self.number}

    shown = Summaries([Counted(n) for n in range(3)])
    assert len(shown) == 3 and made == []
    assert next(iter(shown)) == {"n": 0} and made == [0]
    assert shown[2] == {"n": 2} and [s["n"] for s in shown] == [0, 1, 2]


def _deep_size(value, seen=None):
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        size += sum(_deep_size(item, seen) for item in value)
    return size
