"""The probe as a monitoring check: a ProbeResult becomes a state, a status
line and perfdata. The verdict is decided here; render/nagios.py only prints."""

from . import monitoring
from .monitoring import CRITICAL, OK, UNKNOWN, WARNING, Outcome, perfdata, threshold_state
from .probe import UNRESOLVABLE, ProbeResult


def evaluate(result: ProbeResult, warning=None, critical=None, timeout=10.0, max_attempts=3,
             warn_on_retry=False) -> Outcome:
    """``warning``/``critical`` are Range thresholds on the response time (seconds)."""
    time_value = result.rtt if result.ok else None
    data = [perfdata("time", time_value, "s", warning, critical, 0.0, float(timeout)),
            perfdata("attempts", len(result.attempts), "", None, None, 0, max_attempts)]
    message = result.message
    if result.verdict == UNRESOLVABLE:
        state = UNKNOWN
    elif not result.ok:
        state = CRITICAL
    else:
        state = threshold_state(result.rtt, warning, critical)
        if state != OK:
            limit = critical if state == CRITICAL else warning
            message += f", beyond the {monitoring.STATE_NAMES[state].lower()} threshold {limit.text} s"
        notes = [f"{c.name}: {c.detail}" for c in result.warnings]
        if warn_on_retry and result.retried:
            notes.insert(0, f"answered only after {len(result.attempts)} resets")
        if notes:
            state = max(state, WARNING)
            message += " - " + "; ".join(notes)
    return Outcome(state, message, data, details=detail_lines(result))


def detail_lines(result: ProbeResult):
    """The probe's story for ``-v``: attempts, checks, causes."""
    lines = [f"resolved: {', '.join(result.addresses) or '-'}; wrapping: {result.wrapping}"]
    for attempt in result.attempts:
        rtt = f", reply after {attempt.rtt * 1000:.1f} ms" if attempt.rtt is not None else ""
        detail = f" ({attempt.detail})" if attempt.detail else ""
        session = f" (session {attempt.session_id})" if attempt.session_id else ""
        lines.append(f"attempt {attempt.number} at +{attempt.sent_at:.3f} s to {attempt.address}{session}: "
                     f"{attempt.outcome}{rtt}{detail}")
    for check in result.checks:
        mark = "ok" if check.ok else ("warn" if check.severity == "warning" else "FAIL")
        lines.append(f"[{mark}] {check.name}: {check.detail}")
    lines.extend(f"likely cause: {cause}" for cause in result.causes)
    return lines

