"""``ovpndiag analyze``'s output: each session's verdict, evidence, advice and
timeline for people, or one JSON object per session; then a table of verdicts."""

import json
from collections import Counter

from .. import verdicts
from .line import endpoint, utc

SIDE_WIDTH = 7  # "client", "server", "network"


def session_text(number: int, analysis: dict) -> str:
    wrapping = analysis["wrapping"] or "unknown wrapping"
    lines = [f"Session {number}: {endpoint(analysis['client'], analysis['client_port'])} -> "
             f"{endpoint(analysis['server'], analysis['server_port'])} {analysis['transport'].upper()}, {wrapping}; "
             f"client session {analysis['session_id'] or '?'}, server session {analysis['remote_session_id'] or '?'}"]
    if analysis["start"] is not None:
        lines.append(f"  from {utc(analysis['start'])} for {analysis['end'] - analysis['start']:.3f} s"
                     + (f", {analysis['tls_version']}" if analysis.get("tls_version") else ""))
    verdict = verdicts.get(analysis["verdict"])
    lines.append(f"  verdict: {analysis['verdict']} (stage reached: {analysis['stage_reached']}) - {verdict.meaning}")
    for line in analysis["evidence"]:
        lines.append(f"    {line}")
    for advice in analysis["advice"]:
        lines.append(f"  try: {advice}")
    if analysis["timeline"]:
        lines.append("  timeline:")
        for frame, offset, side, text in analysis["timeline"]:
            when = f"{offset:10.6f}" if offset is not None else " " * 10
            lines.append(f"    {frame:>7} {when} {side:<{SIDE_WIDTH}} {text}")
    counts = [f"retransmissions: client {analysis['retransmissions']['client']}, "
              f"server {analysis['retransmissions']['server']}",
              f"never acknowledged: client {analysis['unacknowledged']['client']}, "
              f"server {analysis['unacknowledged']['server']}"]
    if analysis["rtt"] is not None:
        counts.append(f"round trip {analysis['rtt'] * 1000:.3f} ms")
    if analysis["renegotiations"]:
        counts.append(f"renegotiations {analysis['renegotiations']}")
    lines.append("  " + "; ".join(counts))
    return "\n".join(lines)


def session_json(analysis: dict, path=None) -> str:
    shown = dict(analysis)
    shown["timeline"] = [{"frame": frame, "time": offset, "from": side, "event": text}
                         for frame, offset, side, text in analysis["timeline"]]
    if path is not None:
        shown = {"file": str(path), **shown}
    return json.dumps(shown)


class VerdictTable:
    """The verdicts over all sessions, and for each the clients it came from most."""

    SHOWN_CLIENTS = 3

    def __init__(self):
        self.verdicts = Counter()
        self.clients = {}  # verdict -> Counter of client addresses

    def add(self, analysis: dict):
        verdict = analysis["verdict"]
        self.verdicts[verdict] += 1
        self.clients.setdefault(verdict, Counter())[analysis["client"]] += 1

    def text(self) -> str:
        total = sum(self.verdicts.values())
        if not total:
            return "No OpenVPN session in the capture."
        lines = [f"Verdicts over {total} session{'s' if total != 1 else ''}:"]
        for verdict, count in sorted(self.verdicts.items(), key=lambda item: (-item[1], item[0])):
            clients = self.clients[verdict]
            shown = ", ".join(f"{address} ({n})" if len(clients) > 1 else address
                              for address, n in clients.most_common(self.SHOWN_CLIENTS))
            more = len(clients) - self.SHOWN_CLIENTS
            if more > 0:
                shown += f" and {more} more"
            lines.append(f"  {count:>7} {verdict:<28} from {shown}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"sessions": sum(self.verdicts.values()), "verdicts": dict(self.verdicts)}
