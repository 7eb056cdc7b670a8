"""The real failure and busy captures for `ovpndiag analyze` (issue 12) show what their
manifest entries say: each capture's verdict(s) are named, and the packets prove the
failure - read with ovpndiag.dissect, the TCP flags and the cut's frames with struct
(tests/captures.py's oracle), so a wrong or re-recorded capture fails here."""

import struct
from collections import Counter, defaultdict

import pytest

from captures import CAPTURES, entry, transport_payloads
from ovpndiag import dissect
from ovpndiag.verdicts import VERDICTS

BUSY_KINDS = {  # kind: (clients, sessions each, verdict without keys, with the server's key)
    "good": (12, 1, "ok", "ok"),
    "wrong-key": (3, 3, "server-silent", "wrong-key"),
    "wrong-key-direction": (2, 3, "server-silent", "wrong-key-direction"),
    "no-tls-auth": (1, 3, "server-silent", "no-tls-auth"),
    "untrusted-cert": (2, 3, "client-certificate-rejected", "client-certificate-rejected"),
    "wrong-password": (2, 3, "stopped-after-tls", "stopped-after-tls"),
}
HARD_RESETS = ("P_CONTROL_HARD_RESET_CLIENT_V2", "P_CONTROL_HARD_RESET_SERVER_V2")


def records(name, **options):
    capture = entry(name)
    with dissect.open(str(CAPTURES / capture["file"]), ports=[capture["port"]], **options) as run:
        return list(run.records())


def client_sessions(recs):
    """{(client port, client session id): [its records]} in order of first packet; a server
    packet joins the session it acknowledges, then by its own session id; data the port's latest."""
    sessions, server_ids, latest = {}, {}, {}
    for r in recs:
        port = r.sport if r.sender == "client" else r.dport
        if r.opcode == "P_DATA_V2":
            key = latest[port]
        elif r.sender == "client":
            key = latest[port] = (port, r.session_id)
        else:
            key = server_ids.setdefault((port, r.session_id), (port, r.remote_session_id))
        sessions.setdefault(key, []).append(r)
    return sessions


def tcp_flags(name):
    """[(frame, sport, dport, flags)] of the capture's TCP segments (Ethernet, IPv4)."""
    out = []
    for frame, sender, transport, _seq, flags, _payload in transport_payloads(entry(name)):
        assert transport == "tcp"
        out.append((frame, sender, flags))
    return out


# --------------------------------------------------------------------------- manifest

@pytest.mark.parametrize("name, verdict", [
    ("fail-client-cert-untrusted-tcp-tls12", "client-certificate-rejected"),
    ("fail-expired-server-cert-tls13", "server-certificate-rejected"),
])
def test_the_failures_name_their_verdict(name, verdict):
    capture = entry(name)
    assert (capture["group"], capture["verdict"], capture["outcome"]) == ("failures", verdict, "failed")
    assert VERDICTS[verdict].capture


def test_busy_mixed_names_each_clients_verdicts_with_and_without_keys():
    capture = entry("busy-mixed")
    assert (capture["group"], capture["wrapping"], capture["auth"], capture["key"],
            capture["server_key_direction"]) == ("busy", "tls-auth", "SHA256", "keys/ta.key", 0)
    clients = capture["clients"]
    assert sorted(c["client_port"] for c in clients) == list(range(20001, 20023))
    assert Counter(c["client"] for c in clients) == {kind: n for kind, (n, *_rest) in BUSY_KINDS.items()}
    for c in clients:
        _n, sessions, verdict, with_keys = BUSY_KINDS[c["client"]]
        assert (c["sessions"], c["verdict"], c["verdict_with_keys"]) == (sessions, verdict, with_keys), c
    per_port = Counter(s["client_port"] for s in capture["sessions"])
    assert per_port == {c["client_port"]: c["sessions"] for c in clients}
    by_port = {c["client_port"]: c for c in clients}
    for s in capture["sessions"]:
        assert (s["verdict"], s["verdict_with_keys"]) == (by_port[s["client_port"]]["verdict"],
                                                          by_port[s["client_port"]]["verdict_with_keys"])
    names = {s[v] for busy in ("busy-mixed", "busy-mixed-cut") for s in entry(busy)["sessions"]
             for v in ("verdict", "verdict_with_keys")}
    assert names <= {name for name, v in VERDICTS.items() if v.capture}


# --------------------------------------------------------------------------- what the packets show

def test_untrusted_client_cert_over_tcp_tls12_crosses_in_clear_and_the_server_closes():
    """Every connection: the client's Certificate (from the rogue CA, in clear), then not one
    OpenVPN packet from the server - no ACK, no alert - and the server's FIN."""
    name = "fail-client-cert-untrusted-tcp-tls12"
    recs = records(name, tls_details=True)
    by_port = defaultdict(list)
    for r in recs:
        by_port[r.sport if r.sender == "client" else r.dport].append(r)
    server_fins = [frame for frame, sender, flags in tcp_flags(name) if sender == "server" and flags & 0x01]
    assert len(by_port) >= 3
    connections = sorted(by_port.values(), key=lambda conn: conn[0].frame)
    for conn, following in zip(connections, connections[1:] + [None]):
        certificate = next(r for r in conn if r.sender == "client" and r.tls and "Certificate" in r.tls)
        details = next(d for d in certificate.tls_details if d["name"] == "Certificate")
        assert not details["encrypted"]
        assert [c["issuer"] for c in details["certificates"]] == ["CN=ovpndiag-rogue-ca,O=ovpndiag test material"]
        assert [r.frame for r in conn if r.sender == "server" and r.frame > certificate.frame] == []
        assert not any(certificate.message_packet_id in (r.acks or []) for r in conn if r.sender == "server")
        # the server's FIN closes this connection: after the certificate, before the next one opens
        fin = next(frame for frame in server_fins if frame > certificate.frame)
        assert following is None or fin < following[0].frame


def test_expired_server_cert_tls13_the_client_restarts_after_the_servers_flight():
    """Every session: the server's TLS 1.3 flight (Server Hello, then encrypted records), the
    client's Finished never comes (its only P_CONTROL_V1 is the Client Hello; it ACKs part of the
    flight at most); its next packet is a new reset with a new session id, and the server sends
    the unacknowledged part of its flight again."""
    recs = records("fail-expired-server-cert-tls13", tls_details=True)
    sessions = client_sessions(recs)
    assert len(sessions) >= 3
    order = list(sessions)
    for n, key in enumerate(order):
        s = sessions[key]
        flight = [r for r in s if r.sender == "server" and r.opcode == "P_CONTROL_V1"]
        hello = next(d for d in flight[0].tls_details if d["name"] == "Server Hello")
        assert hello["version"] == "TLS 1.3"
        assert any(d["encrypted"] for r in flight for d in r.tls_details or [])
        assert [r.tls for r in s if r.sender == "client" and r.opcode == "P_CONTROL_V1"] == [["Client Hello"]]
        acked = {a for r in s if r.sender == "client" for a in r.acks or []}
        sent = {r.message_packet_id for r in flight}
        assert not sent <= acked                   # part of the flight is never acknowledged
        if n + 1 < len(order):
            after = [r for r in recs if r.sender == "client" and r.frame > flight[0].frame
                     and r.opcode != "P_ACK_V1"]
            assert after[0].opcode == "P_CONTROL_HARD_RESET_CLIENT_V2" and after[0].session_id != key[1]
    resent = [key for key, s in sessions.items()
              if len([r.message_packet_id for r in s if r.sender == "server" and r.opcode == "P_CONTROL_V1"]) >
              len({r.message_packet_id for r in s if r.sender == "server" and r.opcode == "P_CONTROL_V1"})]
    assert resent


def test_busy_mixed_has_the_sessions_its_manifest_lists():
    """Read with ovpndiag: per client port as many sessions as the manifest says, with the
    same session ids in the same order; a good one with data both ways, a server-silent one
    never answered, one refused inside TLS answered (reset and TLS) but without data."""
    capture = entry("busy-mixed")
    sessions = client_sessions(records("busy-mixed"))
    listed = [(s["client_port"], int(s["session_id"], 16)) for s in capture["sessions"]]
    assert list(sessions) == listed
    kinds = {c["client_port"]: c["client"] for c in capture["clients"]}
    for (port, _sid), recs in sessions.items():
        senders = {(r.sender, r.opcode) for r in recs}
        data = {r.sender for r in recs if r.opcode == "P_DATA_V2"}
        verdict = BUSY_KINDS[kinds[port]][2]
        if verdict == "ok":
            assert data == {"client", "server"}, port
        elif verdict == "server-silent":
            assert {sender for sender, _op in senders} == {"client"}, port
            assert {op for _s, op in senders} == {"P_CONTROL_HARD_RESET_CLIENT_V2"}, port
        else:
            assert not data and ("server", "P_CONTROL_HARD_RESET_SERVER_V2") in senders, port
            assert ("server", "P_CONTROL_V1") in senders, port
    # the sessions overlap: a busy server, not one client after another
    first = {key: recs[0].frame for key, recs in sessions.items()}
    last = {key: recs[-1].frame for key, recs in sessions.items()}
    assert any(first[a] < first[b] < last[a] for a in sessions for b in sessions if a != b)


def test_busy_mixed_wrapping_of_the_failing_clients():
    """The no-tls-auth client's resets carry no HMAC; the others' a 32-byte one (SHA256)."""
    kinds = {c["client_port"]: c["client"] for c in entry("busy-mixed")["clients"]}
    resets = [r for r in records("busy-mixed") if r.opcode == "P_CONTROL_HARD_RESET_CLIENT_V2"]
    plain = {r.sport for r in resets if r.wrapping == "none"}
    assert plain == {port for port, kind in kinds.items() if kind == "no-tls-auth"}
    assert {r.hmac_size for r in resets if r.sport not in plain} == {32}


def test_busy_mixed_cut_is_the_source_from_its_cut_on():
    """The cut's frames are busy-mixed's, byte for byte, from the first one 13 s in."""
    def frames(name):
        data = (CAPTURES / name).read_bytes()
        out, off = [], 24
        while off + 16 <= len(data):
            sec, usec, incl, _orig = struct.unpack("<IIII", data[off:off + 16])
            out.append((sec + usec / 1e6, data[off:off + 16 + incl]))
            off += 16 + incl
        return data[:24], out

    cut = entry("busy-mixed-cut")
    assert (cut["derived_from"], cut["capture_start"], cut["cut_seconds"]) == ("busy-mixed.pcap", "mid-session", 13.0)
    head, source = frames("busy-mixed.pcap")
    cut_head, kept = frames("busy-mixed-cut.pcap")
    start = next(n for n, (ts, _f) in enumerate(source) if ts >= source[0][0] + 13.0)
    assert cut_head == head and [f for _t, f in kept] == [f for _t, f in source[start:]]


def test_busy_mixed_cut_says_incomplete_where_the_start_is_gone():
    """In the cut: a session with a hard reset keeps its verdict; one without is ok only if
    data still flows both ways, else incomplete - and there is at least one such session."""
    cut = entry("busy-mixed-cut")
    sessions = client_sessions_by_ids(records("busy-mixed-cut"), cut["sessions"])
    full = {(s["client_port"], s["session_id"]): s for s in entry("busy-mixed")["sessions"]}
    assert {s["verdict"] for s in cut["sessions"]} >= {"incomplete", "ok"}
    for s in cut["sessions"]:
        recs = sessions[(s["client_port"], s["session_id"])]
        assert recs[0].frame == s["first_frame"] and len(recs) == s["packets"]
        has_reset = any(r.opcode in HARD_RESETS for r in recs)
        both_ways = {r.sender for r in recs if r.opcode == "P_DATA_V2"} == {"client", "server"}
        before = full[(s["client_port"], s["session_id"])]
        expected = ((before["verdict"], before["verdict_with_keys"]) if has_reset else
                    ("ok", "ok") if both_ways else ("incomplete", "incomplete"))
        assert (s["verdict"], s["verdict_with_keys"]) == expected, s


def client_sessions_by_ids(recs, listed):
    """The cut's records per listed session: by the client's or the server's session id
    (the cut may hold only one side's control packets), data by the port's listed session
    that has data around it (the port's latest one started before the packet)."""
    by_client = {(s["client_port"], int(s["session_id"], 16)): (s["client_port"], s["session_id"]) for s in listed}
    by_server = {(s["client_port"], int(s["server_session_id"], 16)): (s["client_port"], s["session_id"])
                  for s in listed if s["server_session_id"]}
    out = defaultdict(list)
    latest = {}
    for r in recs:
        port = r.sport if r.sender == "client" else r.dport
        if r.opcode == "P_DATA_V2":
            key = latest.get(port) or next(k for k in by_client.values() if k[0] == port)
        elif r.sender == "client":
            key = by_client[(port, r.session_id)]
        else:
            key = by_server[(port, r.session_id)]
        latest[port] = key
        out[key].append(r)
    return out
