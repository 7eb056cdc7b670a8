"""analyze's fast path (analyze.fastcount: packets counted in their sessions from their
bytes, no Record) leaves every session's trace as the record path (Reader.record ->
SessionTrace.count) leaves it: on every packet of every real capture, with and without
keys, and on thousands of mangled packets fed through real captures' flows."""

import pytest

from captures import ALL_CAPTURES, CAPTURES, key_path
from test_listing import FILES, PORTS, _mangle
from ovpndiag.analyze import fastcount
from ovpndiag.analyze.landmarks import Landmarks
from ovpndiag.analyze.trace import Context, trace_class
from ovpndiag.capture.datagrams import Transport, read_transport
from ovpndiag.dissect.keyring import KeyRing
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.keys import StaticKey, read_key

STATIC = [entry["file"] for entry in ALL_CAPTURES if entry["wrapping"] == "static-key"]


def datagrams(name, events=True):
    return list(read_transport(str(CAPTURES / name), Transport(events=events)))


def traces(stream, keys=None, fast=False):
    """Each session's trace as the reader left it (before judging), in the reader's order,
    and how many packets it handed out."""
    session_class = trace_class(Context(keylog=True))  # (a key log: the TLS bytes are kept too)
    if fast:
        session_class.fast_path = staticmethod(fastcount.install)
    reader = Reader(Options(ports=PORTS, keys=keys, sessions=True, session_class=session_class))
    handed = sum(len(reader.feed(datagram)) for datagram in stream) + len(reader.finish())
    assert not reader.ended  # (no bundled capture idles long enough for a flow to expire)
    return handed, [_state(session) for flow in reader.flows.values() for session in flow.sessions.values()]


def _state(trace):
    marks = trace.marks
    return (trace.client_session_id, trace.server_session_id, trace.first_frame, trace.last_frame, trace.first,
            trace.last, trace.data, trace.trial, trace.chunks, trace.events, trace.floats,
            [getattr(marks, name) for name in Landmarks.__slots__])


@pytest.mark.parametrize("name", FILES + STATIC)
def test_every_captured_packet_leaves_the_record_paths_trace(name):
    stream = datagrams(name)
    expected = traces(stream)
    assert expected[1] or name in STATIC, name
    assert traces(stream, fast=True) == expected


@pytest.mark.parametrize("key_option, key_file", [("tls_auth", "ta.key"), ("tls_crypt", "tc.key")])
def test_with_keys_the_traces_are_the_record_paths(key_option, key_file):
    keys = KeyRing(**{key_option: read_key(key_path("keys/" + key_file), StaticKey)})
    for name in FILES:
        stream = datagrams(name)
        assert traces(stream, keys, fast=True) == traces(stream, keys), name


def test_the_fast_path_takes_most_packets(monkeypatch):
    """Not a test that cannot fail: the record path is counted, and must be the exception."""
    taken = []
    record = Reader.record
    monkeypatch.setattr(Reader, "record", lambda self, *args: taken.append(args) or record(self, *args))
    handed, sessions = traces(datagrams("udp-tls-auth-sha256.pcap"), fast=True)
    assert sessions and not taken
    handed, sessions = traces(datagrams("udp-tls-crypt-v2.pcap"), fast=True)
    assert sessions and 0 < len(taken) <= handed // 4  # (the client's WKc packets: the record path's)


@pytest.mark.parametrize("seed", range(3))
def test_mangled_packets_leave_the_record_paths_trace(seed):
    for name in FILES:
        clean = datagrams(name, events=False)  # (_mangle takes packets only)
        for variant in range(4):
            stream = list(_mangle(clean, (seed * 100 + variant) * 1000 + FILES.index(name)))
            assert traces(stream, fast=True) == traces(stream), (name, variant)
