"""Transport events (Transport(events=True)): ICMP errors about a UDP/TCP packet and TCP
connection signals, checked against tshark on real captures, across shards, through the
reader's hook and the pipeline's switch, and on hand-made edge cases; with events off the
transport delivers what it always did."""

import shutil
import subprocess

import pytest

from capture_files import ethernet, ipv4, ipv6, pcap, tcp, udp
from captures import ALL_CAPTURES, CAPTURES
from ovpndiag.capture.datagrams import (ICMP_TOO_BIG, ICMP_UNREACHABLE, TCP_FIN, TCP_REFUSED, TCP_RST,
                                        TCP_UNANSWERED, Datagram, Progress, Transport, TransportEvent,
                                        read_transport)
from ovpndiag.dissect.reader import Options, Reader
from ovpndiag.dissect.sessions import Session

SYN, RST, FIN, ACK = 0x02, 0x04, 0x01, 0x10
LOCAL, REMOTE = b"\x7f\0\0\1", b"\x7f\0\0\2"
V6_CLIENT, V6_SERVER, V6_ROUTER = (bytes(15) + b"\1", b"\x20\x01\x0d\xb8" + bytes(11) + b"\2",
                                   b"\x20\x01\x0d\xb8" + bytes(11) + b"\3")


def tshark(name, display_filter, *fields):
    assert shutil.which("tshark"), "tshark is needed (Debian package tshark; see .ci/run)"
    argv = ["tshark", "-r", str(CAPTURES / name), "-Y", display_filter, "-T", "fields", "-E", "separator=|"]
    for field in fields:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def read(source, **transport):
    items = list(read_transport(source, Transport(**transport)))
    return [i for i in items if i.__class__ is Datagram], [i for i in items if i.__class__ is TransportEvent]


def events_of(source, **transport):
    return read(source, events=True, **transport)[1]


def frames(*packets, linktype=1):
    """A pcap of frames one second apart."""
    return pcap([(1000 + n, 0, packet) for n, packet in enumerate(packets)], linktype=linktype)


def file(tmp_path, data):
    path = tmp_path / "t.pcap"
    path.write_bytes(data)
    return str(path)


def icmp4(kind, code, quoted, rest=b"\0\0\0\0"):
    return bytes([kind, code]) + b"\0\0" + rest + quoted


def icmp6(kind, code, quoted, rest=b"\0\0\0\0"):
    return bytes([kind, code]) + b"\0\0" + rest + quoted


# --------------------------------------------------------------------------- real captures


def test_icmp_port_unreachable_names_the_quoted_client_flow_in_its_frame():
    """fail-port-closed.pcap: each client reset answered by ICMP port unreachable; the events
    are tshark's ICMP frames, quoting the client's port -> 1194, reported by 127.0.0.1."""
    expected = [(int(frame), int(sport), int(dport)) for frame, sport, dport in
                tshark("fail-port-closed.pcap", "icmp.type == 3 && icmp.code == 3", "frame.number", "udp.srcport",
                       "udp.dstport")]
    assert len(expected) == 4
    datagrams, events = read(CAPTURES / "fail-port-closed.pcap", events=True)
    assert [(e.frame, e.sport, e.dport) for e in events] == expected
    for event in events:
        assert (event.kind, event.transport, event.src, event.dst, event.by) == \
            (ICMP_UNREACHABLE, "udp", "127.0.0.1", "127.0.0.1", "127.0.0.1")
        assert event.port_unreachable and (event.icmp_type, event.icmp_code, event.mtu) == (3, 3, None)
        reset = [d for d in datagrams if d.frame == event.frame - 1][0]  # the reset it quotes
        assert (reset.src, reset.sport, reset.dst, reset.dport) == (event.src, event.sport, event.dst, event.dport)


def test_a_refused_tcp_connection_is_an_event_on_the_clients_direction():
    """fail-port-closed-tcp.pcap: every SYN answered by RST/ACK; one 'refused' event per
    attempt, in the RST's frame, naming the SYN's frame and the client -> server ports."""
    syns = tshark("fail-port-closed-tcp.pcap", "tcp.flags.syn == 1 && tcp.flags.ack == 0", "frame.number",
                  "tcp.srcport")
    resets = tshark("fail-port-closed-tcp.pcap", "tcp.flags.reset == 1", "frame.number", "tcp.dstport")
    assert len(syns) == len(resets) >= 3
    events = events_of(CAPTURES / "fail-port-closed-tcp.pcap")
    assert [(e.frame, e.kind, e.sport, e.dport, e.syn_frame, e.syns) for e in events] == \
        [(int(rst), TCP_REFUSED, int(port), 1194, int(syn), 1) for (syn, port), (rst, _) in zip(syns, resets)]
    assert all(e.src == e.dst == e.by == "127.0.0.1" and e.transport == "tcp" for e in events)


def test_fin_says_which_side_closed_first():
    """fail-untrusted-cert-tcp.pcap: the server closes each connection (FIN from 1194), then the
    client; one 'fin' event per FIN segment tshark shows, on the sender's direction."""
    fins = [(int(frame), int(sport), int(dport)) for frame, sport, dport in
            tshark("fail-untrusted-cert-tcp.pcap", "tcp.flags.fin == 1", "frame.number", "tcp.srcport",
                   "tcp.dstport")]
    events = events_of(CAPTURES / "fail-untrusted-cert-tcp.pcap")
    assert [(e.frame, e.sport, e.dport) for e in events] == fins
    assert {e.kind for e in events} == {TCP_FIN}
    assert [e.sport for e in events][::2] == [1194] * (len(fins) // 2)  # the server first, each time
    assert all(e.by == e.src for e in events)


EVENT_CAPTURES = ["fail-port-closed.pcap", "fail-port-closed-tcp.pcap", "fail-untrusted-cert-tcp.pcap",
                  "tcp-plain.pcap", "udp-vlan.pcap", "udp-static-key.pcap"]


@pytest.mark.parametrize("name", EVENT_CAPTURES)
@pytest.mark.parametrize("shards", [2, 3])
def test_shards_give_the_events_one_reader_gives(name, shards):
    """Each event goes to one shard: its flow's (an ICMP error: the quoted flow's)."""
    whole = events_of(CAPTURES / name)
    taken = []
    for index in range(shards):
        items = read_transport(CAPTURES / name, Transport(shard=(index, shards), events=True))
        taken += [i for i in items if i.__class__ is TransportEvent]
    assert sorted(taken) == sorted(whole) and whole


@pytest.mark.parametrize("name", [e["file"] for e in ALL_CAPTURES if (CAPTURES / e["file"]).exists()])
def test_events_leave_the_datagrams_and_counts_as_they_were(name):
    """On every bundled capture: the same datagrams and counts with events as without, and
    Transport.feed (the general path) gives the same events as the fast file reader."""
    plain, on = Transport(), Transport(events=True)
    without = list(read_transport(CAPTURES / name, plain))
    items = list(read_transport(CAPTURES / name, on))
    assert [i for i in items if i.__class__ is not TransportEvent] == without
    assert on.counts.as_dict() == plain.counts.as_dict()
    from ovpndiag.capture.pcapfile import scan

    general, number, time = Transport(events=True), 0, 0.0
    fed = []
    for number, time, linktype, data, _orig in scan(CAPTURES / name):
        fed += general.feed(number, time, linktype, data)
    fed += general.flush(number, time)
    assert fed == items
    frames_seen = [i.frame for i in items]
    assert frames_seen == sorted(frames_seen)  # frame order, events among the datagrams


# --------------------------------------------------------------------------- hand-made edge cases


def test_icmp_quoting_a_cut_udp_header_gives_no_event_or_a_clean_one(tmp_path):
    """The ports are the quote's first 4 bytes past its IP header: with 2 of them there is no
    event (counted as skipped, as before); with 4 (a cut UDP header) the event is whole."""
    reset = ipv4(LOCAL, REMOTE, 17, udp(40000, 1194, b"\x38" + bytes(13)))
    short = icmp4(3, 3, reset[:22])
    ports_only = icmp4(3, 3, reset[:24])
    no_ip = icmp4(3, 3, reset[:12])
    data = frames(*(ethernet(ipv4(REMOTE, LOCAL, 1, quote)) for quote in (short, ports_only, no_ip)))
    transport = Transport(events=True)
    items = list(read_transport(file(tmp_path, data), transport))
    assert [(e.frame, e.sport, e.dport, e.src, e.dst, e.by, e.transport) for e in items] == \
        [(2, 40000, 1194, "127.0.0.1", "127.0.0.2", "127.0.0.2", "udp")]
    assert transport.counts.other_protocol == 3 and transport.counts.undecodable == 0


def test_icmp_about_a_later_fragment_or_another_protocol_gives_no_event(tmp_path):
    later = ipv4(LOCAL, REMOTE, 17, bytes(16), flags_offset=0x0002)  # offset 16: no UDP header in it
    esp = ipv4(LOCAL, REMOTE, 50, bytes(16))
    echo = b"\x08\0\0\0\0\0\0\0" + bytes(8)  # an echo request is no error
    data = frames(ethernet(ipv4(REMOTE, LOCAL, 1, icmp4(3, 3, later))),
                  ethernet(ipv4(REMOTE, LOCAL, 1, icmp4(3, 3, esp))), ethernet(ipv4(REMOTE, LOCAL, 1, echo)))
    assert events_of(file(tmp_path, data)) == []


def test_icmpv6_port_unreachable_and_packet_too_big(tmp_path):
    """ICMPv6 type 1 code 4 and type 2 (its MTU), quoting an IPv6 UDP packet behind a
    destination-options header, reported by a router; ICMPv4 3/4 gives its next-hop MTU."""
    quoted = ipv6(V6_CLIENT, V6_SERVER, 60, b"\x11\0" + bytes(6) + udp(50000, 1194, bytes(40)))
    v4 = ipv4(LOCAL, REMOTE, 17, udp(40001, 1194, bytes(1400)))[:28]
    data = frames(ethernet(ipv6(V6_ROUTER, V6_CLIENT, 58, icmp6(1, 4, quoted))),
                  ethernet(ipv6(V6_ROUTER, V6_CLIENT, 58, icmp6(2, 0, quoted, rest=(1280).to_bytes(4, "big")))),
                  ethernet(ipv4(REMOTE, LOCAL, 1, icmp4(3, 4, v4, rest=b"\0\0" + (1400).to_bytes(2, "big")))))
    events = events_of(file(tmp_path, data))
    assert [(e.kind, e.src, e.dst, e.sport, e.dport, e.by, e.icmp_type, e.icmp_code, e.mtu, e.port_unreachable)
            for e in events] == [
        (ICMP_UNREACHABLE, "::1", "2001:db8::2", 50000, 1194, "2001:db8::3", 1, 4, None, True),
        (ICMP_TOO_BIG, "::1", "2001:db8::2", 50000, 1194, "2001:db8::3", 2, 0, 1280, False),
        (ICMP_TOO_BIG, "127.0.0.1", "127.0.0.2", 40001, 1194, "127.0.0.2", 3, 4, 1400, False)]


def test_an_unanswered_syn_ends_with_the_capture_and_a_reset_names_its_sender(tmp_path):
    client, server = (LOCAL, REMOTE), (REMOTE, LOCAL)
    data = frames(
        ethernet(ipv4(*client, 6, tcp(40000, 1194, 7, SYN))),           # 1: never answered, sent 3 times
        ethernet(ipv4(*client, 6, tcp(40000, 1194, 7, SYN))),
        ethernet(ipv4(*client, 6, tcp(40002, 1194, 100, SYN))),         # 3: answered, then reset by the server
        ethernet(ipv4(*server, 6, tcp(1194, 40002, 500, SYN | ACK, ack=101))),
        ethernet(ipv4(*client, 6, tcp(40000, 1194, 7, SYN))),
        ethernet(ipv4(*client, 6, tcp(40002, 1194, 101, ACK, b"\0\x0e" + bytes(14)))),
        ethernet(ipv4(*server, 6, tcp(1194, 40002, 501, RST | ACK))))   # 7
    events = events_of(file(tmp_path, data))
    assert [(e.frame, e.kind, e.sport, e.dport, e.by, e.syn_frame, e.syns) for e in events] == [
        (7, TCP_RST, 1194, 40002, "127.0.0.2", None, 0),
        (7, TCP_UNANSWERED, 40000, 1194, "127.0.0.2", 1, 3)]  # (at the end of the capture)


# --------------------------------------------------------------------------- the reader


class Hooked(Reader):
    wants_transport_events = True

    def __init__(self, options=None):
        super().__init__(options)
        self.calls = []  # ("packet", frame) and ("event", frame, flow, sender, kind), in call order

    def output(self, flow, frame, time, sender, data, inference):
        self.calls.append(("packet", frame))
        return super().output(flow, frame, time, sender, data, inference)

    def transport_event(self, flow, sender, event):
        self.calls.append(("event", event.frame, flow, sender, event.kind))


def hooked(source, **options):
    reader = Hooked(Options(**options))
    for item in read_transport(source, events=True):
        reader.feed(item)
    reader.finish()
    return reader


def test_the_hook_gets_the_quoted_flow_as_the_client_in_frame_order():
    reader = hooked(CAPTURES / "fail-port-closed.pcap")
    assert [call[:2] for call in reader.calls] == [("packet" if n % 2 else "event", n) for n in range(1, 9)]
    for _, frame, flow, sender, kind in (c for c in reader.calls if c[0] == "event"):
        assert sender == "client" and kind == ICMP_UNREACHABLE and flow.server == ("127.0.0.1", 1194)
        assert flow is reader.flows[("udp",) + tuple(sorted([flow.client, flow.server]))]


def test_an_icmp_error_about_the_servers_packets_is_the_servers():
    """udp-vlan.pcap: the client exits, its port closes, and the server's next packet gets an
    ICMP port unreachable from the client's host: the event is on the server's direction."""
    (frame, reporter, sport, dport), = tshark("udp-vlan.pcap", "icmp.type == 3 && icmp.code == 3", "frame.number",
                                             "ip.src", "udp.srcport", "udp.dstport")
    reader = hooked(CAPTURES / "udp-vlan.pcap")
    (_, at, flow, sender, kind), = [c for c in reader.calls if c[0] == "event"]
    assert (at, sender, kind, flow.server[1], flow.client[1]) == (int(frame), "server", ICMP_UNREACHABLE, 1194,
                                                                  int(dport))
    event, = events_of(CAPTURES / "udp-vlan.pcap")
    assert (event.by, event.sport, event.dport) == (reporter.split(",")[0], int(sport), int(dport))


def test_a_refused_connection_makes_its_flow_on_an_openvpn_port_only(tmp_path):
    reader = hooked(CAPTURES / "fail-port-closed-tcp.pcap")
    events = [c for c in reader.calls if c[0] == "event"]
    assert len(events) == 5 and all(c[3] == "client" and c[4] == TCP_REFUSED for c in events)
    assert all(c[2].server == ("127.0.0.1", 1194) and c[2].transport == "tcp" for c in events)
    # Not an OpenVPN port: the client stream's end (a datagram, as ever) made the flow the hook gets.
    data = frames(ethernet(ipv4(LOCAL, REMOTE, 6, tcp(40000, 8080, 7, SYN))),
                  ethernet(ipv4(REMOTE, LOCAL, 6, tcp(8080, 40000, 0, RST | ACK, ack=8))))
    (_, _, flow, sender, kind), = [c for c in hooked(file(tmp_path, data)).calls if c[0] == "event"]
    assert (flow.client, sender, kind) == (("127.0.0.1", 40000), "client", TCP_REFUSED)


def test_an_event_without_a_flow_makes_one_on_an_openvpn_port_only(tmp_path):
    """An ICMP error whose quoted packet is not in the capture: on port 5000 the hook hears of it
    without a flow (none is made); on 1194, or 5000 given as a port, its flow is made."""
    for port, ports, made in ((5000, (), False), (1194, (), True), (5000, (5000,), True)):
        quoted = ipv4(LOCAL, REMOTE, 17, udp(40000, port, bytes(14)))[:28]
        data = frames(ethernet(ipv4(REMOTE, LOCAL, 1, icmp4(3, 3, quoted))))
        reader = hooked(file(tmp_path, data), ports=ports)
        (_, frame, flow, sender, kind), = reader.calls
        if made:
            assert (flow.client, flow.server, sender) == (("127.0.0.1", 40000), ("127.0.0.2", port), "client")
            assert list(reader.flows.values()) == [flow]
        else:
            assert (flow, sender, reader.flows) == (None, None, {})


def test_an_event_waits_behind_the_undecided_packets_before_it(tmp_path):
    """A flow on an unknown port is held until decided (HOLD_TIME, 2 s): the ICMP error about
    it, 0.1 s later, waits in the queue and reaches the hook after them, before what follows."""
    resets = [ipv4(LOCAL, REMOTE, 17, udp(40000, 5000, b"\x38" + b"\1" * 8 + bytes(range(n, n + 40))))
              for n in range(4)]
    error = ethernet(ipv4(REMOTE, LOCAL, 1, icmp4(3, 3, resets[0][:28])))
    packets = [ethernet(r) for r in resets[:3]] + [error, ethernet(resets[3])]
    data = pcap([(1000, n * 100000, packet) for n, packet in enumerate(packets)])
    reader = Hooked(Options())
    for item in read_transport(file(tmp_path, data), events=True):
        reader.feed(item)
        if item.frame == 4:
            assert len(reader.queue) == 4 and reader.calls == []  # (it waits)
    reader.finish()
    assert [c[:2] for c in reader.calls] == [("packet", 1), ("packet", 2), ("packet", 3), ("event", 4), ("packet", 5)]
    assert reader.calls[3][3] == "client"


class EventSession(Session):
    wants_transport_events = True
    heard = []

    def transport_event(self, event, sender):
        EventSession.heard.append((event.frame, event.kind, sender))


def test_the_pipeline_reads_events_when_the_reader_wants_them():
    """The switch: a session class that takes events makes the reader want them, and the
    pipeline then reads the capture with Transport(events=True); a plain reader does not."""
    from ovpndiag.dissect.pipeline import COUNT, Dissection, reader_options

    for session_class, expected in ((EventSession, [(2, ICMP_UNREACHABLE, "client"), (4, ICMP_UNREACHABLE, "client"),
                                                    (6, ICMP_UNREACHABLE, "client"), (8, ICMP_UNREACHABLE, "client")]),
                                    (Session, [])):
        EventSession.heard = []
        options, _ = reader_options(sessions=True)
        options.session_class = session_class
        for capture in Dissection([str(CAPTURES / "fail-port-closed.pcap")], options, False, 1):
            for _ in capture.batches(COUNT):
                pass
            assert capture.reader.wants_transport_events is (session_class is EventSession)
        assert EventSession.heard == expected


def test_progress_and_events_mix_in_a_sharded_read():
    """A sharded read yields Progress marks too: events never hide them or come out of order."""
    items = list(read_transport(CAPTURES / "fail-port-closed-tcp.pcap", Transport(shard=(0, 1), events=True)))
    assert {i.__class__ for i in items} >= {TransportEvent, Datagram}
    assert all(i.__class__ in (TransportEvent, Datagram, Progress) for i in items)


def test_mangled_icmp_errors_give_an_event_or_a_skip_never_a_crash_or_another_count():
    """Real ICMP errors (fail-port-closed's, and rebuilt as ICMPv6) with their ICMP part
    changed and cut at random: an ICMP tuple with whole ports and addresses, or OTHER_PROTOCOL
    as before events existed - never UNDECODABLE (that would move the frame to another count)."""
    import random
    import socket

    from capture_files import real_records
    from ovpndiag.capture.framedecode import ICMP, OTHER_PROTOCOL, decode_frame

    rng = random.Random(12)
    v4 = real_records("fail-port-closed.pcap")[1][2][14:]
    quoted6 = ipv6(V6_CLIENT, V6_SERVER, 17, v4[28 + 20:])
    behind_options = ipv6(V6_CLIENT, V6_SERVER, 60, b"\x11\0" + bytes(6) + v4[28 + 20:])
    shapes = [(v4[20:], 1), (icmp6(1, 4, quoted6), 58), (icmp6(2, 0, behind_options), 58)]
    outcomes = set()
    for icmp, protocol in shapes:
        for _ in range(1500):
            body = bytearray(icmp)
            for _ in range(rng.randint(0, 3)):
                body[rng.randrange(min(len(body), 72))] = rng.randrange(256)
            body = bytes(body[:rng.randint(0, len(body))] if rng.random() < 0.4 else body)
            packet = ipv4(LOCAL, REMOTE, 1, body) if protocol == 1 else ipv6(V6_ROUTER, V6_CLIENT, 58, body)
            result = decode_frame(1, ethernet(packet))
            assert result == OTHER_PROTOCOL or result[0] == ICMP, (body.hex(), result)
            if result != OTHER_PROTOCOL:
                _, src, dst, sport, dport, transport, reporter, kind, code, mtu = result
                for address in (src, dst, reporter):
                    socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
                assert 0 <= sport < 65536 and 0 <= dport < 65536 and transport in ("udp", "tcp")
                assert (kind, protocol) in ((3, 1), (1, 58), (2, 58)) and 0 <= code < 256
                assert (mtu is not None) == (kind == 2 or (kind, code) == (3, 4))
            outcomes.add(result if result == OTHER_PROTOCOL else ICMP)
    assert outcomes == {ICMP, OTHER_PROTOCOL}
