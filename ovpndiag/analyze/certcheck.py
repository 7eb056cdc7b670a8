"""A certificate seen in clear (TLS 1.2), judged at the time it was captured.

``judge_certificate(leaf, at, other)`` says what is wrong with it that a peer would
refuse: expired or not yet valid at ``at`` (the session's start, capture time), and
an issuer that is not the other side's CA. Only what the capture shows: a peer's CA
file is not in it, so a foreign issuer is a likely cause, not a proof.
"""

import datetime


def judge_certificate(leaf: dict, at, other=None):
    """Lines for people about ``leaf`` (dissect.tls's certificate dict: subject, issuer,
    not_before, not_after) at epoch seconds ``at``; ``other``: (frame, chain) the other
    side showed, to compare issuers."""
    lines = []
    subject = leaf.get("subject", "?")
    when = None if at is None else datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    not_before, not_after = _time(leaf.get("not_before")), _time(leaf.get("not_after"))
    if when is not None and not_after is not None and not_after < when:
        days = (when - not_after).total_seconds() / 86400
        lines.append(f"the certificate {subject} expired on {leaf['not_after']}, {days:.0f} days before the "
                     "session (at capture time)")
    elif when is not None and not_before is not None and not_before > when:
        days = (not_before - when).total_seconds() / 86400
        lines.append(f"the certificate {subject} is not valid until {leaf['not_before']}, {days:.0f} days after "
                     "the session: a clock is wrong")
    if other and other[1]:
        chain = other[1]
        other_cas = {cert.get("issuer") for cert in chain} | {cert.get("subject") for cert in chain[1:]}
        if leaf.get("issuer") not in other_cas:
            lines.append(f"the certificate {subject} is issued by {leaf.get('issuer')}, not by the CA of the "
                         f"other side's certificate ({chain[0].get('issuer')}): that CA is likely not trusted")
    return lines


def _time(text):
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
