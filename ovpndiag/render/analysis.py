"""``ovpndiag analyze``'s output: each session's verdict, evidence, advice and
timeline for people, or one JSON object per session; then a table of verdicts."""

import json
from collections import Counter

from .. import verdicts
from .line import endpoint, utc_text

def session_text(number: int, analysis: dict) -> str:
    """One session's analysis for people (a busy capture has thousands: %-formats, the
    cheapest Python has, and a start time formatted once per second)."""
    lines = ["Session %d: %s -> %s %s, %s; client session %s, server session %s" % (
        number, endpoint(analysis["client"], analysis["client_port"]),
        endpoint(analysis["server"], analysis["server_port"]), analysis["transport"].upper(),
        analysis["wrapping"] or "unknown wrapping", analysis["session_id"] or "?", analysis["remote_session_id"] or "?")]
    start = analysis["start"]
    if start is not None:
        tls = analysis.get("tls_version")
        lines.append("  from %s for %.3f s%s" % (utc_text(int(start // 1)), analysis["end"] - start, ", " + tls if tls else ""))
    verdict = analysis["verdict"]
    lines.append("  verdict: %s (stage reached: %s) - %s" % (verdict, analysis["stage_reached"],
                                                             verdicts.get(verdict).meaning))
    lines += ["    " + line for line in analysis["evidence"]]
    lines += ["  try: " + advice for advice in analysis["advice"]]
    timeline = analysis["timeline"]
    if timeline:
        lines.append("  timeline:")
        lines += ["    %7d %10.6f %-7s %s" % (frame, offset, side, text) if offset is not None else
                  "    %7d %10s %-7s %s" % (frame, "", side, text) for frame, offset, side, text in timeline]
    resent, unacked = analysis["retransmissions"], analysis["unacknowledged"]
    counts = "  retransmissions: client %d, server %d; never acknowledged: client %d, server %d" % (
        resent["client"], resent["server"], unacked["client"], unacked["server"])
    if analysis["rtt"] is not None:
        counts += "; round trip %.3f ms" % (analysis["rtt"] * 1000)
    if analysis["renegotiations"]:
        counts += "; renegotiations %d" % analysis["renegotiations"]
    lines.append(counts)
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
        clients = self.clients.get(verdict)
        if clients is None:
            clients = self.clients[verdict] = Counter()
        clients[analysis["client"]] += 1

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
