"""Probe results as a report for people at a terminal."""

import datetime

import click

MARKS = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("warn", "yellow")}


def probe_report(result, settings) -> str:
    lines = [click.style(f"Probing {result.host} port {result.port}/{result.proto} "
                         f"with {result.wrapping}", bold=True)]
    if result.addresses:
        lines.append(f"  resolved to {', '.join(result.addresses)}")
    for attempt in result.attempts:
        rtt = f"reply after {attempt.rtt * 1000:.1f} ms" if attempt.rtt is not None else attempt.outcome
        detail = f" ({attempt.detail})" if attempt.detail and attempt.rtt is None else ""
        lines.append(f"  attempt {attempt.number}  +{attempt.sent_at:.3f} s  {attempt.address}  {rtt}{detail}")
    if result.reply:
        lines.append("Reply: " + describe_reply(result.reply))
    if result.checks:
        lines.append("Checks:")
        width = max(len(c.name) for c in result.checks)
        for check in result.checks:
            word, colour = MARKS[check.ok if check.ok or check.severity == "critical" else None]
            lines.append(f"  {click.style(f'[{word}]', fg=colour):<6} {check.name:<{width}}  {check.detail}")
    verdict_colour = "green" if result.ok else "red"
    lines.append(click.style("Verdict: ", bold=True)
                 + click.style("OK" if result.ok else "FAILED", fg=verdict_colour, bold=True)
                 + f" - {result.message}")
    if result.causes:
        lines.append("Likely causes, and what to try:")
        lines.extend(f"  - {cause}" for cause in result.causes)
    return "\n".join(lines)


def describe_reply(reply: dict) -> str:
    parts = [f"{reply.get('opcode', '?')} key_id {reply.get('key_id', '?')}"]
    if "session_id" in reply:
        parts.append(f"session {reply['session_id']}")
    if "acks" in reply:
        parts.append(f"acks {reply['acks']}" + (f" of {reply['remote_session_id']}" if reply.get("acks") else ""))
    if "message_packet_id" in reply:
        parts.append(f"message packet-id {reply['message_packet_id']}")
    if "replay_packet_id" in reply:
        parts.append(f"replay packet-id {reply['replay_packet_id']}")
    if "net_time" in reply:
        stamp = datetime.datetime.fromtimestamp(reply["net_time"], datetime.timezone.utc)
        parts.append(f"net time {stamp:%Y-%m-%d %H:%M:%S} UTC")
    if reply.get("tlvs"):
        parts.append(f"TLVs {', '.join(reply['tlvs'])}")
    parts.append(f"{reply.get('length', '?')} bytes")
    return ", ".join(parts)


def try_keys_report(result) -> str:
    lines = [click.style(f"Trying key combinations on {result.host} port {result.port}/{result.proto}",
                         bold=True)]
    width = max((len(t.label) for t in result.tried), default=10)
    for tried in result.tried:
        colour = "green" if tried.works else ("yellow" if tried.outcome.startswith("answered") else None)
        lines.append(f"  {tried.label:<{width}}  {click.style(tried.outcome, fg=colour)}")
    if result.working:
        lines.append(click.style("Works: ", bold=True, fg="green") + "; ".join(result.working))
        lines.append(f"  (the client side's settings: {result.hint})")
    else:
        lines.append(click.style("No combination answered: ", bold=True, fg="red") + result.message)
    return "\n".join(lines)
