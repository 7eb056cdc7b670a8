"""Every packet of every real capture dissects with the layers and rebuilds to
the same bytes; the captures show what the manifest says they show."""

import struct
from collections import Counter

import pytest
from scapy.config import conf

from captures import ALL_CAPTURES, CAPTURES, MANIFEST, REAL_WORLD, openvpn_packets, tcp_segments, wrapping_of
from ovpndiag.layers import OPCODES, OpenVPN, OpenVPNTCP, from_wire

NAMES = [capture["file"] for capture in MANIFEST]
BY_NAME = {capture["file"]: capture for capture in MANIFEST}


def test_manifest_lists_every_capture_and_the_folder_stays_small():
    every = [capture["file"] for capture in ALL_CAPTURES]
    on_disk = sorted(path.name for pattern in ("*.pcap", "*.pcapng") for path in CAPTURES.glob(pattern))
    assert on_disk == sorted(every)
    assert {capture["group"] for capture in ALL_CAPTURES} == {"basic", "real-world", "failures", "keylog", "busy"}
    readme = (CAPTURES / "README.md").read_text()
    assert all(name in readme for name in every)
    # 5 MiB: 2.9 MB for the >25,000-packet flood (small pings), ~0.5 MB for busy-mixed (its cut
    # copy and 22 clients' logs), the rest one session or failure each.
    assert sum(path.stat().st_size for path in CAPTURES.rglob("*") if path.is_file()) < 5 * 1024 * 1024


def test_every_failure_capture_names_a_verdict_a_capture_can_get():
    from ovpndiag.verdicts import VERDICTS

    failures = [capture for capture in ALL_CAPTURES if capture["group"] == "failures"]
    assert {capture["verdict"] for capture in failures} >= {
        "server-certificate-rejected", "client-certificate-rejected", "client-hello-rejected",
        "auth-failed", "no-shared-cipher", "port-closed"}
    for capture in failures:
        assert VERDICTS[capture["verdict"]].capture, capture["file"]
        assert capture["outcome"] == "failed" and not capture["data_channel"], capture["file"]


@pytest.mark.parametrize("name", NAMES)
def test_every_packet_dissects_and_rebuilds_byte_for_byte(name):
    capture = BY_NAME[name]
    packets = list(openvpn_packets(capture))
    assert packets
    for packet in packets:
        pkt, problem = from_wire(packet.data, wrapping_of(capture, packet))
        assert problem is None, f"frame {packet.frame}: {problem}"
        assert bytes(pkt) == packet.data, f"frame {packet.frame} rebuilds differently"
        assert type(pkt).__name__ != "OpenVPNHeader"


@pytest.mark.parametrize("name", NAMES)
def test_handshake_starts_with_the_client_reset(name):
    capture = BY_NAME[name]
    first = next(iter(openvpn_packets(capture)))
    pkt = OpenVPN(first.data, wrapping=wrapping_of(capture, first))
    assert first.sender == "client"
    assert pkt.opcode_name == ("P_CONTROL_HARD_RESET_CLIENT_V3" if capture["client"]["key"] and
                               "tcv2" in capture["client"]["key"] else "P_CONTROL_HARD_RESET_CLIENT_V2")
    assert pkt.key_id == 0 and pkt.session_id != 0


def _opcodes(capture):
    return Counter((OPCODES[p.data[0] >> 3], p.data[0] & 7) for p in openvpn_packets(capture))


@pytest.mark.parametrize("name", [n for n in NAMES if BY_NAME[n]["outcome"] == "connected"])
def test_connected_sessions_reach_the_data_channel(name):
    seen = _opcodes(BY_NAME[name])
    assert seen[("P_CONTROL_HARD_RESET_SERVER_V2", 0)] >= 1
    assert seen[("P_CONTROL_V1", 0)] >= 4 and seen[("P_ACK_V1", 0)] >= 1
    assert seen[("P_DATA_V2", 0)] >= 1


def test_the_server_reset_echoes_the_client_session_and_acks_packet_id_0():
    for capture in MANIFEST:
        packets = list(openvpn_packets(capture))
        client = OpenVPN(packets[0].data, wrapping=wrapping_of(capture, packets[0]))
        for packet in packets:
            if packet.data[0] >> 3 == 8 and capture["wrapping"] in ("none", "tls-auth"):
                reply = OpenVPN(packet.data, wrapping=wrapping_of(capture, packet))
                assert reply.acks == [0] and reply.message_packet_id == 0
                if reply.remote_session_id == client.session_id:
                    assert reply.answers(client)
                break


def test_renegotiation_capture_has_a_soft_reset_with_key_id_1():
    seen = _opcodes(BY_NAME["udp-reneg.pcap"])
    assert seen[("P_CONTROL_SOFT_RESET_V1", 1)] >= 1
    assert seen[("P_CONTROL_V1", 1)] >= 1 and seen[("P_DATA_V2", 1)] >= 1


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("fail-tls")])
def test_rejected_keys_get_no_answer_at_all(name):
    seen = _opcodes(BY_NAME[name])
    assert set(seen) == {("P_CONTROL_HARD_RESET_CLIENT_V2", 0)} and seen[("P_CONTROL_HARD_RESET_CLIENT_V2", 0)] >= 2


def test_untrusted_certificate_gets_into_tls_then_stops_short_of_data():
    seen = _opcodes(BY_NAME["fail-untrusted-cert.pcap"])
    assert seen[("P_CONTROL_V1", 0)] >= 2 and not seen[("P_DATA_V2", 0)]


def test_ipv6_capture_is_over_ipv6():
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap

    assert all(IPv6 in pkt for pkt in rdpcap(str(CAPTURES / "udp6-tls-auth.pcap")))


# One wrapping for a whole capture cannot follow a renegotiation's switch to dynamic
# tls-crypt; that is the capture reader's job, so udp-reneg is left out here. Scapy
# reassembles only IPv4 fragments while reading (IPSession), so IPv6 fragments are too.
@pytest.mark.parametrize("name", [n for n in NAMES if not BY_NAME[n]["renegotiation"]
                                  and not (BY_NAME[n].get("fragmented") and BY_NAME[n]["family"] == 6)])
def test_scapy_dissects_the_capture_through_the_port_binding(name):
    """What a user of Scapy's shell gets from rdpcap() after importing the bindings."""
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Loopback
    from scapy.packet import bind_layers
    from scapy.sessions import IPSession, TCPSession
    from scapy.sendrecv import sniff

    from ovpndiag.bindings import bind_port

    bind_layers(Loopback, IPv6, type=30)  # BSD loopback as macOS writes it (Scapy knows 24 and 10)

    capture = BY_NAME[name]
    bind_port(capture["port"])
    expected = [p.data for p in openvpn_packets(capture)]
    plain_wrapping = {p.data: wrapping_of(capture, p) for p in openvpn_packets(capture)}
    conf.contribs["openvpn"] = {"wrapping": plain_wrapping[expected[0]]}
    try:
        if capture["transport"] == "udp":
            packets = sniff(offline=str(CAPTURES / name), session=IPSession)
            seen = [bytes(p[UDP].payload) for p in packets if UDP in p and OpenVPN in p]
            assert all(isinstance(p[UDP].payload, OpenVPN) for p in packets if UDP in p)
        else:
            packets = sniff(offline=str(CAPTURES / name), session=TCPSession)
            seen = []
            for p in packets:
                frame = p[TCP].payload if TCP in p else None
                while isinstance(frame, OpenVPNTCP):
                    seen.append(bytes(frame.packet))
                    frame = frame.payload
        assert seen == expected
    finally:
        conf.contribs.pop("openvpn", None)


@pytest.mark.parametrize("name", [n for n in NAMES if BY_NAME[n]["transport"] == "tcp"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 5000])
def test_tcp_reassembly_handles_packets_split_or_bundled_across_segments(name, chunk):
    """Re-cut each direction's real byte stream into segments of ``chunk`` bytes:
    small chunks split packets across segments, large ones put several in one."""
    from scapy.sessions import TCPSession

    capture = BY_NAME[name]
    for sender in ("client", "server"):
        stream = b"".join(payload for who, payload in tcp_segments(capture) if who == sender)
        expected = [p.data for p in openvpn_packets(capture) if p.sender == sender]
        session = TCPSession(app=True)
        session.session["openvpn_wrapping"] = wrapping_of(capture, next(openvpn_packets(capture)))
        seen, most_in_one_segment = [], 0
        for offset in range(0, len(stream), chunk):
            frame = session.process(stream[offset:offset + chunk], cls=OpenVPNTCP)
            before = len(seen)
            while isinstance(frame, OpenVPNTCP):
                seen.append(bytes(frame.packet))
                frame = frame.payload
            most_in_one_segment = max(most_in_one_segment, len(seen) - before)
        assert seen == expected
        if chunk == 5000:
            assert most_in_one_segment >= 2


def test_packets_built_from_scratch_equal_the_real_ones():
    """The golden layouts of test_layers.py, checked against what OpenVPN sent."""
    from ovpndiag.layers import OpenVPNAck, OpenVPNReset

    packets = list(openvpn_packets(BY_NAME["udp-plain.pcap"]))
    client, server = OpenVPN(packets[0].data), OpenVPN(packets[1].data)
    assert bytes(OpenVPNReset(session_id=client.session_id)) == packets[0].data
    assert bytes(OpenVPNReset(opcode=8, session_id=server.session_id, acks=[0],
                              remote_session_id=client.session_id)) == packets[1].data
    ack = next(OpenVPN(p.data) for p in packets if p.data[0] >> 3 == 5)
    assert bytes(OpenVPNAck(session_id=ack.session_id, acks=list(ack.acks),
                            remote_session_id=ack.remote_session_id)) == bytes(ack)
    assert len(packets[0].data) == 14 and len(packets[1].data) == 26


# ---- the real-world captures show what the manifest says (tshark comparisons: test_realworld.py)

REAL = {capture["file"]: capture for capture in REAL_WORLD}


@pytest.mark.parametrize("name", [n for n, c in REAL.items() if c["capture_start"] == "mid-session"])
def test_mid_session_captures_hold_no_reset_and_open_with_data(name):
    capture = REAL[name]
    packets = list(openvpn_packets(capture))
    opcodes = [OPCODES[p.data[0] >> 3] for p in packets]
    assert not [op for op in opcodes if "HARD_RESET" in op]
    assert opcodes[0] == "P_DATA_V2" and {p.sender for p in packets if p.data[0] >> 3 == 9} == {"client", "server"}
    if capture["renegotiation"]:
        key_ids = [(OPCODES[p.data[0] >> 3], p.data[0] & 7) for p in packets]
        soft_reset = key_ids.index(("P_CONTROL_SOFT_RESET_V1", 1))
        assert ("P_DATA_V2", 0) in key_ids[:soft_reset] and ("P_DATA_V2", 1) in key_ids[soft_reset:]
    else:
        assert set(opcodes) == {"P_DATA_V2"}


def test_the_long_capture_is_long():
    capture = REAL["udp-midsession-flood.pcap"]
    assert sum(1 for _ in openvpn_packets(capture)) > 25000



def _udp_packets(capture):
    """(client port, sender, OpenVPN packet) of each UDP datagram on the capture's (IPv4) port,
    parsed with struct: Scapy's bound OpenVPN layer would take static-key bytes for a header."""
    from scapy.utils import RawPcapReader

    from captures import _ip_packet

    port = capture["port"]
    reader = RawPcapReader(str(CAPTURES / capture["file"]))
    for data, _meta in reader:
        ip = _ip_packet(reader.linktype, data)
        if ip is None or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        sport, dport = struct.unpack("!HH", udp[:4])
        if port in (sport, dport):
            yield (sport if dport == port else dport), ("client" if dport == port else "server"), udp[8:]


def test_the_floating_client_keeps_its_peer_id_from_a_new_port_and_the_server_follows():
    capture = REAL["udp-float.pcap"]
    packets = list(_udp_packets(capture))
    ports = [port for port, sender, _ in packets if sender == "client"]
    runs = [port for i, port in enumerate(ports) if i == 0 or port != ports[i - 1]]
    assert len(runs) == 2 and runs[0] != runs[1]  # one port, then another, never back
    old, new = runs
    peer_ids = {port: {data[1:4] for p, sender, data in packets if sender == "client" and p == port
                       and data[0] >> 3 == 9} for port in runs}
    assert len(peer_ids[old]) == 1 and peer_ids[new] == peer_ids[old]
    assert not [data for p, _, data in packets if p == new and data[0] >> 3 in (7, 8)]  # no new session
    assert any(p == new and sender == "server" and data[0] >> 3 == 9 for p, sender, data in packets)
    assert "floated from" in (CAPTURES / "logs" / "udp-float.server.log").read_text()


def test_the_try_keys_run_is_many_resets_from_one_socket_and_one_answer_per_right_setting():
    packets = list(_udp_packets(REAL["udp-try-keys.pcap"]))
    client = [data for _, sender, data in packets if sender == "client"]
    answers = [data for _, sender, data in packets if sender == "server"]
    assert len({port for port, _, _ in packets}) == 1 and len(client) >= 19
    assert {data[0] >> 3 for data in client} == {7} and len({data[1:9] for data in client}) == len(client)
    assert len({len(data) for data in client}) >= 5  # tls-crypt and five digests
    assert answers and {data[0] >> 3 for data in answers} == {8}
    assert len(answers[0]) == 9 + 64 + 8 + 1 + 4 + 8 + 4  # a SHA512 tls-auth server reset


def test_static_key_packets_are_hmac_iv_and_cbc_blocks_without_an_opcode():
    packets = list(_udp_packets(REAL["udp-static-key.pcap"]))
    assert {sender for _, sender, _ in packets} == {"client", "server"} and len(packets) >= 6
    assert all(len(data) >= 20 + 16 + 16 and (len(data) - 36) % 16 == 0 for _, _, data in packets)
    assert len({data[0] >> 3 for _, _, data in packets}) > 1  # read as an opcode, it is noise
    assert "option --secret is deprecated" in (CAPTURES / "logs" / "udp-static-key.server.log").read_text()
