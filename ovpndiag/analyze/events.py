"""A transport event (capture.datagrams.TransportEvent) said for people: ``describe``.

The capture knows addresses and directions, the reader which side is the client;
this turns the two into the (kind, text) a session keeps. Kinds:

- ``port-unreachable``: ICMP port unreachable for the side's packets (nothing listens there);
- ``unreachable``: another ICMP destination unreachable (no route, host, prohibited...);
- ``too-big``: ICMP fragmentation needed / packet too big (the path MTU is smaller);
- ``fin`` / ``rst``: the side closed / reset its TCP connection;
- ``refused``: the side's TCP SYN was answered by a RST (nothing listens);
- ``unanswered``: the side's TCP SYN got no answer at all.
"""

from typing import Tuple

from ..capture.datagrams import (ICMP_TOO_BIG, ICMP_UNREACHABLE, TCP_FIN, TCP_REFUSED, TCP_RST, TCP_UNANSWERED,
                                 TransportEvent)

# Codes of ICMPv4 type 3 and ICMPv6 type 1 (RFC 792, 1812; RFC 4443), as the people who read them say.
_V4_UNREACHABLE = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                   3: "port unreachable", 4: "fragmentation needed", 5: "source route failed",
                   6: "network unknown", 7: "host unknown", 9: "network administratively prohibited",
                   10: "host administratively prohibited", 11: "network unreachable for TOS",
                   12: "host unreachable for TOS", 13: "communication administratively prohibited",
                   14: "host precedence violation", 15: "precedence cutoff in effect"}
_V6_UNREACHABLE = {0: "no route to destination", 1: "communication administratively prohibited",
                   2: "beyond scope of source address", 3: "address unreachable", 4: "port unreachable",
                   5: "source address failed ingress/egress policy", 6: "reject route to destination"}


def describe(event: TransportEvent, sender: str) -> Tuple[str, str]:
    """(kind, one line for people) of ``event``; ``sender`` ("client"/"server") is the
    side whose direction ``event.src`` -> ``event.dst`` is (the reader's hook gets it)."""
    kind, to = event.kind, _endpoint(event.dst, event.dport)
    if kind == ICMP_UNREACHABLE:
        if event.port_unreachable:
            return "port-unreachable", f"ICMP port unreachable from {event.by} for the {sender}'s packets to {to}"
        names = _V4_UNREACHABLE if event.icmp_type == 3 else _V6_UNREACHABLE
        reason = names.get(event.icmp_code, f"code {event.icmp_code}")
        return "unreachable", f"ICMP destination unreachable ({reason}) from {event.by} for the {sender}'s packets to {to}"
    if kind == ICMP_TOO_BIG:
        what = "fragmentation needed" if event.icmp_type == 3 else "packet too big"
        mtu = f" (MTU {event.mtu})" if event.mtu else ""
        return "too-big", f"ICMP {what}{mtu} from {event.by} for the {sender}'s packets to {to}"
    if kind == TCP_FIN:
        return "fin", f"the {sender} closed the TCP connection (FIN)"
    if kind == TCP_RST:
        return "rst", f"the {sender} reset the TCP connection (RST)"
    attempts = _attempts(event)
    if kind == TCP_REFUSED:
        return "refused", f"TCP connection to {to} refused: RST from {event.by} to the {sender}'s SYN{attempts}"
    if kind == TCP_UNANSWERED:
        return "unanswered", f"the {sender}'s TCP SYN to {to} was never answered{attempts}"
    return kind, f"{kind} ({event.transport} {event.src}:{event.sport} -> {to})"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _attempts(event: TransportEvent) -> str:
    said = []
    if event.syn_frame is not None:
        said.append(f"first SYN in frame {event.syn_frame}")
    if event.syns > 1:
        said.append(f"{event.syns} SYNs")
    return f" ({', '.join(said)})" if said else ""
