"""A HandshakeResult judged: monitoring state, final verdict, message and advice,
and the check's status line with perfdata.

The client's verdict says how the handshake went; the server certificate's
remaining days can make it worse (``--cert-warning``/``--cert-critical``): an
``ok`` handshake whose certificate ends within the window becomes
``certificate-expiring``. ``handshake --json``, the report and ``check --stage``
all show this one judgement. Renderers print it; nothing here formats for a terminal.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional

from . import verdicts
from .monitoring import CRITICAL, OK, STATE_NAMES, UNKNOWN, WARNING, Outcome, perfdata, threshold_state


@dataclass
class Judgement:
    state: int
    verdict: str
    message: str
    advice: List[str] = field(default_factory=list)
    failed_stage: Optional[str] = None  # the stage that did not complete
    cert_days: Optional[float] = None
    cert_note: str = ""  # what the certificate's dates mean, when they matter
    elapsed: Optional[float] = None  # when the last stage reached ended (seconds from the first packet)

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


def judge(result, cert_warning=30.0, cert_critical=7.0) -> Judgement:
    verdict = result.verdict
    known = verdicts.VERDICTS.get(verdict)
    state = verdicts.state_of(verdict)  # (a name outside the vocabulary is UNKNOWN: a bug to see)
    message = result.message or (known.meaning if known else verdict)
    advice = list(result.advice) or list(known.advice if known else ())
    failed = next((stage.name for stage in result.stages if not stage.ok), None)
    certificate = result.server_certificate or {}
    days = _exact_days(certificate)
    cert_state, cert_verdict = verdicts.certificate_state(days, cert_warning, cert_critical,
                                                         _not_yet_valid(certificate))
    note = ""
    if cert_verdict is not None:
        note = _certificate_note(cert_verdict, days, certificate)
        if verdict == "ok" or state < cert_state:
            if verdict == "ok":  # the certificate is the news
                verdict, message = cert_verdict, f"{message}; but {note}"
                advice = list(verdicts.get(cert_verdict).advice)
            else:
                message = f"{message}; {note}"
                advice += [a for a in verdicts.get(cert_verdict).advice if a not in advice]
            state = max(state, cert_state)
        elif note not in message:
            message = f"{message}; {note}"
    elapsed = max((stage.elapsed for stage in result.stages), default=None)
    return Judgement(state, verdict, message, advice, failed, days, note, elapsed)


def _not_yet_valid(certificate) -> bool:
    return bool(certificate.get("not_yet_valid"))


def _certificate_note(cert_verdict, days, certificate) -> str:
    if cert_verdict == "certificate-not-yet-valid":
        return f"the server certificate is not valid before {certificate.get('not_before', '?')}"
    if cert_verdict == "certificate-expired":
        return f"the server certificate expired {expired_for(certificate)} ago ({certificate.get('not_after', '?')})"
    return f"the server certificate ends in {_days(days)} ({certificate.get('not_after', '?')})"


def _not_after(certificate):
    import datetime

    try:
        return datetime.datetime.strptime(certificate["not_after"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except (KeyError, TypeError, ValueError):
        return None


def _exact_days(certificate) -> Optional[float]:
    """Days left to notAfter as a fraction (the client's days_left is rounded down:
    an hour past the end would read as a whole day)."""
    import datetime

    ended = _not_after(certificate)
    if ended is None:
        return certificate.get("days_left")
    return (ended - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400


def expired_for(certificate) -> str:
    """How long ago an expired certificate ended, from its notAfter ("2 days", "5 hours"):
    days_left is rounded down, so -2 may mean 25 hours."""
    days = _exact_days(certificate)
    return _days(max(-days, 0.0)) if days is not None else "some time"


def _days(days) -> str:
    if days is None:
        return "? days"
    whole = int(days)
    if whole == 0:
        return f"{days * 24:.0f} hours"
    return f"{whole} day{'s' if whole != 1 else ''}"


def where(result) -> str:
    """e.g. 192.0.2.1:1194/udp: the address that answered (address:port), else the host."""
    if result.address:
        return f"{result.address}/{result.proto}"
    host = f"[{result.host}]" if ":" in result.host else result.host
    return f"{host}:{result.port}/{result.proto}"


def evaluate(result, stage, warning=None, critical=None, timeout=10.0, cert_warning=30.0,
             cert_critical=7.0, warn_on_retry=False) -> Outcome:
    """``check --stage``: the status line names the stage that failed and why;
    perfdata ``time``, one label per stage completed, and ``cert_days``."""
    judgement = judge(result, cert_warning, cert_critical)
    state = judgement.state
    if judgement.failed_stage:
        message = judgement.message
        if message.startswith(where(result) + ": "):  # said once is enough
            message = message[len(where(result)) + 2:]
        text = f"{where(result)}: {judgement.failed_stage} stage failed: {message}"
    elif state == UNKNOWN or not result.stages:
        text = f"{where(result)}: {judgement.message}"
    else:
        news = judgement.cert_note if judgement.verdict.startswith("certificate-") else judgement.message
        text = (f"{where(result)}: handshake OK up to {stage} in {judgement.elapsed * 1000:.1f} ms"
                + _ok_summary(result) + (f" - {news}" if judgement.verdict != "ok" else ""))
    time_value = judgement.elapsed if result.stages and not judgement.failed_stage else None
    if time_value is not None and judgement.verdict in ("ok", "certificate-expiring"):
        time_state = threshold_state(time_value, warning, critical)
        if time_state != OK:
            limit = critical if time_state == CRITICAL else warning
            text += f", beyond the {STATE_NAMES[time_state].lower()} threshold {limit.text} s"
            state = max(state, time_state)
    reset = result.stage("reset")
    resets = (reset.facts or {}).get("resets_sent", 1) if reset is not None and reset.ok else 1
    if warn_on_retry and resets > 1 and state == OK:
        state, text = WARNING, f"{text} - answered only after {resets} resets"
    data = [perfdata("time", time_value, "s", warning, critical, 0.0, float(timeout))]
    data += [perfdata(s.name, s.elapsed, "s") for s in result.stages if s.ok]
    if judgement.cert_days is not None:
        from .monitoring import Range

        days = math.trunc(judgement.cert_days)  # whole days, toward 0 (an hour past the end is 0, not -1)
        data.append(perfdata("cert_days", days, "", Range.parse(f"{_number(cert_warning)}:"),
                             Range.parse(f"{_number(cert_critical)}:")))
    return Outcome(state, text, data, details=detail_lines(result, judgement))


def _number(value) -> str:
    return f"{value:g}"


def _ok_summary(result) -> str:
    parts = []
    if result.tls:
        parts.append(" ".join(str(result.tls.get(k)) for k in ("version", "cipher") if result.tls.get(k)))
    certificate = result.server_certificate or {}
    if certificate.get("subject"):
        days = certificate.get("days_left")
        parts.append(f"server {certificate['subject']}"
                     + (f", ends in {_days(days)}" if days is not None and days >= 0 else ""))
    if result.data:
        data = result.data
        parts.append(f"{data.get('cipher', '?')}, {data.get('received', 0)}/{data.get('sent', 0)} echoes answered")
    return f" ({'; '.join(parts)})" if parts else ""


def detail_lines(result, judgement) -> List[str]:
    """``-v``: one line per stage, then the verdict's advice."""
    lines = [f"[{'ok' if s.ok else 'FAIL'}] {s.name} at +{s.elapsed:.4f} s: {s.detail}" for s in result.stages]
    certificate = result.server_certificate
    if certificate:
        lines.append(f"server certificate: {certificate.get('subject')}, issuer {certificate.get('issuer')}, "
                     f"valid to {certificate.get('not_after')}, "
                     + ("verified" if certificate.get("verified") else "not verified"))
    if result.push_reply and result.push_reply.get("raw"):
        lines.append("pushed: " + ", ".join(result.push_reply["raw"]))
    lines.append(f"verdict: {judgement.verdict}")
    lines.extend(f"try: {advice}" for advice in judgement.advice)
    return lines


def to_dict(result, judgement) -> dict:
    """``handshake --json``: the client's JSON with the judgement's state, verdict,
    message and advice (no key material or password: to_dict holds none)."""
    data = result.to_dict()
    data.update(state=judgement.state_name, verdict=judgement.verdict, message=judgement.message,
                advice=judgement.advice)
    return data

