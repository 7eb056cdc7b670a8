"""Across a capture's sessions: which open-ended verdicts hold (``settle``).

A verdict that rests on a side *stopping* (judge) holds only if the session is over.
Within a session the capture may show it (a FIN, an ICMP error, quiet); else the
session's client beginning a new session with the server does. That needs every
session of the capture, so it is decided here, once all are judged; then each
analysis gets its verdict's advice.
"""

import bisect
import itertools

from .. import verdicts
from .landmarks import CLIENT

# an OpenVPN client that gives up pauses before it tries again (connect-retry, 1 s by
# default): a session begun sooner from its address is another client's
RESTART_PAUSE = 0.5
HOLD = 2048  # analyses settle holds at most while it reads (some 4 kB each), else it reads them twice


def settle(analyses):
    """The analyses (a sequence, read once or twice) with each open-ended one decided: a session
    whose verdict holds only if it is over is over when its client (address) began a
    later session with the same server (a client reset, a restart pause after its own last
    packet) - unless the address hides several clients: two of its sessions' clients ever
    sent side by side (a busy capture's NAT or loopback: the later session may be anyone's);
    else the capture may have cut it: ``incomplete``. What each client sent spans its
    session here: a server resending into a session its client has left does not stretch it."""
    spans = {}  # (client address, server, port, transport) -> sorted [(client's first, its frame, client's last)]
    # Read once where it can be: what comes before the first open-ended analysis goes out
    # as it is read (it needs no other session), what follows is held till every span is
    # known - unless that is more than HOLD analyses: then they are read again (unpacked
    # afresh: workers' summaries are not the dicts read here).
    held, again, read = [], None, 0
    for analysis in analyses:
        span = analysis.get("client_span")
        if span is not None:
            spans.setdefault(_peers(analysis), []).append(tuple(span))
        if again is None:
            if not held and "open_end" not in analysis:
                analysis.pop("client_span", None)
                yield _advised(analysis)
            elif len(held) < HOLD:
                held.append(analysis)
            else:
                again, held = read - len(held), []  # (from the first one held)
        read += 1
    shared = set()  # the addresses (peers) whose clients sent side by side
    for peers, later in spans.items():
        later.sort()
        reach = float("-inf")
        for first, _frame, last, _began, _last_frame in later:
            if first <= reach:
                shared.add(peers)
                break
            reach = max(reach, last)
    for analysis in held if again is None else itertools.islice(analyses, again, None):
        span = analysis.pop("client_span", None)
        if "open_end" not in analysis:
            yield _advised(analysis)
            continue
        gap = analysis.pop("open_end")
        peers = _peers(analysis)
        later = spans.get(peers, [])
        at = bisect.bisect_right(later, ((span[2] if span else analysis["end"] or 0.0) + RESTART_PAUSE, float("inf")))
        own_last = span[4] if span else analysis["frames"][1]
        # (not a session the capture joined late - not seen begun - nor one its frames put before: a clock step)
        while at < len(later) and (not later[at][3] or later[at][1] <= own_last):
            at += 1
        alone = peers not in shared
        if at < len(later) and alone:
            analysis["evidence"].append(f"frame {later[at][1]}: the client began a new session: it gave this one up")
            yield _advised(analysis)
            continue
        verdict = analysis["verdict"]
        analysis["evidence"].append(
            (f"the capture ends {gap:.1f} s after the session's last packet" if gap is not None
             else "the capture ends") + (" and shows no later session of this client" if alone else
                                         ", and other sessions from its address ran alongside it")
            + f": it may go on past the capture (had it ended there: {verdict})")
        analysis["verdict"] = "incomplete"
        yield _advised(analysis)


def client_span(trace, marks):
    """(time, frame) of the client's first packet, the time of its last, whether the capture
    shows the session begin (a client reset) and the frame of its last, or None: what the
    client sent (with data, to the session's end: data packets are only counted)."""
    data = trace.data
    first = marks.first[CLIENT]
    if data is not None and data[2] and (first is None or data[0] < first[0]):
        first = (data[0], data[1])
    if first is None:
        return None
    last = (trace.last, trace.last_frame) if data is not None and data[2] else marks.last[CLIENT][::-1]
    return first[1], first[0], last[0], bool(marks.client_resets), last[1]


def _advised(analysis):
    """The verdict's advice put in (a finished session does not keep its copy)."""
    analysis["advice"] = list(verdicts.get(analysis["verdict"]).advice)
    return analysis


def _peers(analysis):
    return analysis["client"], analysis["server"], analysis["server_port"], analysis["transport"]
