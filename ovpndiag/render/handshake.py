"""A staged handshake as a report for people at a terminal, in the probe report's
style: one line per stage with its time and outcome, the server certificate, TLS,
the pushed options, the data channel, then the verdict and what to try.

It prints a HandshakeResult and its Judgement (ovpndiag.handshake_check); it
decides nothing. No key material or password ever reaches a result.
"""

import click

from ..client import STAGES
from ..handshake_check import expired_for

STATE_COLOURS = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red", "UNKNOWN": "magenta"}
# The pushed options as ovpndiag.client.push.parse_options gives them, shown under
# OpenVPN's names in this order: (fact, option name, one line per item).
PUSHED = (("ifconfig", "ifconfig", False), ("ifconfig_ipv6", "ifconfig-ipv6", False),
          ("route_gateway", "route-gateway", False), ("topology", "topology", False), ("routes", "route", True),
          ("routes_ipv6", "route-ipv6", True), ("redirect_gateway", "redirect-gateway", False),
          ("dhcp_options", "dhcp-option", True), ("peer_id", "peer-id", False), ("cipher", "cipher", False),
          ("protocol_flags", "protocol-flags", False), ("key_derivation", "key-derivation", False),
          ("ping", "ping", False), ("ping_restart", "ping-restart", False))


def handshake_report(result, judgement, stage="data") -> str:
    """``stage`` is the last stage asked for: the ones after a failure show as not reached."""
    lines = [click.style(f"Handshake with {result.host} port {result.port}/{result.proto}"
                         + (f" with {result.wrapping}" if result.wrapping else ""), bold=True)]
    if result.address:
        lines.append(f"  address {result.address}")
    lines += _stages(result, stage)
    lines += _certificate(result.server_certificate)
    if result.tls:
        tls = result.tls
        lines.append("TLS: " + ", ".join(str(tls[k]) for k in ("version", "cipher") if tls.get(k))
                     + "".join(f", {k} {v}" for k, v in tls.items() if k not in ("version", "cipher") and _shown(v)))
    lines += _push(result.push_reply)
    lines += _data(result.data)
    if result.exit_sent:
        how = {"cc-exit": "EXIT through the control channel (cc-exit)",
               "explicit-exit-notify": "explicit-exit-notify on the data channel"}.get(result.exit_sent,
                                                                                       result.exit_sent)
        lines.append(f"Closed with {how}")
    colour = STATE_COLOURS.get(judgement.state_name)
    lines.append(click.style("Verdict: ", bold=True) + click.style(f"{judgement.state_name} {judgement.verdict}",
                                                                   fg=colour, bold=True)
                 + f" - {judgement.message}")
    if judgement.advice:
        lines.append("What to try:")
        lines.extend(f"  - {advice}" for advice in judgement.advice)
    return "\n".join(lines)


def _stages(result, stage):
    lines = ["Stages:"]
    asked = STAGES[:STAGES.index(stage) + 1] if stage in STAGES else STAGES
    width = max(len(name) for name in asked)
    for reached in result.stages:
        word, colour = ("ok", "green") if reached.ok else ("FAIL", "red")
        mark = click.style(f"[{word}]", fg=colour)
        lines.append(f"  {mark}{' ' * (4 - len(word))} {reached.name:<{width}}  +{reached.elapsed:.4f} s  "
                     f"{reached.detail}")
    for name in asked:
        if result.stage(name) is None:
            lines.append(f"  [--]   {name:<{width}}  not reached")
    return lines


def _shown(value) -> bool:
    return value not in (None, "", [], {})


def _certificate(certificate):
    if not certificate:
        return []
    lines = ["Server certificate:"]
    rows = [("subject", certificate.get("subject")), ("issuer", certificate.get("issuer")),
            ("serial", certificate.get("serial"))]
    if certificate.get("not_before") or certificate.get("not_after"):
        days = certificate.get("days_left")
        left = ""
        if days is not None:
            left = f" ({days:.0f} days left)" if days >= 0 else f" (EXPIRED {expired_for(certificate)} ago)"
        rows.append(("valid", f"{certificate.get('not_before', '?')} to {certificate.get('not_after', '?')}{left}"))
    rows += [("key", certificate.get("key")), ("signature", certificate.get("signature_algorithm"))]
    verified = certificate.get("verified")
    if verified is not None:
        rows.append(("verified", _verified(verified, certificate)))
    chain = certificate.get("chain")
    if chain:
        rows.append(("chain", " <- ".join(_subject(link) for link in chain)))
    known = {"subject", "issuer", "serial", "not_before", "not_after", "days_left", "key", "signature_algorithm",
             "verified", "chain", "verify_errors", "name_problem", "not_yet_valid"}
    rows += [(name, value) for name, value in certificate.items() if name not in known]
    width = max(len(name) for name, value in rows if _shown(value)) if rows else 0
    lines += [f"  {name:<{width}}  {_text(value)}" for name, value in rows if _shown(value)]
    return lines


def _verified(verified, certificate):
    if verified is True:
        return "yes, against the CA given"
    reasons = list(certificate.get("verify_errors") or []) + ([certificate["name_problem"]]
                                                             if certificate.get("name_problem") else [])
    if any(reason.startswith("not verified: no CA") for reason in reasons):
        return "no: no --ca given to verify it against"  # (what OpenSSL says then is only that)
    return "NO: " + "; ".join(reasons) if reasons else "no"


def _subject(link):
    if isinstance(link, dict):
        return str(link.get("subject") or link)
    return str(link)


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items())
    if value is True:
        return "yes"
    return str(value)


def _push(push_reply):
    if not push_reply:
        return []
    lines = ["Pushed options:"]
    for fact, name, each in PUSHED:
        value = push_reply.get(fact)
        if not _shown(value):
            continue
        if each:
            lines += [f"  {name} {_words(item)}" for item in value]  # one line each, as OpenVPN logs them
        else:
            lines.append(f"  {name} {_words(value)}".rstrip())
    if push_reply.get("auth_token"):
        lines.append("  auth-token [hidden]")
    lines += [f"  {option}" for option in push_reply.get("other") or []]
    return lines


def _words(value) -> str:
    """An option's arguments as OpenVPN writes them: separated by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(item) for item in value)
    return str(value)


def _data(data):
    """The data stage's facts (ovpndiag.client.datachannel): cipher, keys, echoes, loss, RTT."""
    if not data:
        return []
    head = str(data.get("cipher") or "?")
    if data.get("format"):
        head += f" over {data['format']}"
    if data.get("key_derivation"):
        head += f" (keys from {'the TLS exporter' if data['key_derivation'] == 'tls-ekm' else 'the PRF'})"
    parts = [head]
    sent, received = data.get("sent"), data.get("received") or 0
    if sent is not None:
        loss = data.get("loss")
        if loss is None and sent:
            loss = 100.0 * (sent - received) / sent
        parts.append(f"{sent} echo{'es' if sent != 1 else ''}" + (f" to {data['target']}" if data.get("target") else "")
                     + f", {received} answered" + (f", {loss:g}% lost" if loss is not None else ""))
    rtt = data.get("rtt")
    if isinstance(rtt, (int, float)):
        if received > 1 and data.get("rtt_min") is not None and data.get("rtt_max") is not None:
            parts.append(f"rtt min/avg/max {data['rtt_min'] * 1000:.2f}/{rtt * 1000:.2f}/{data['rtt_max'] * 1000:.2f} ms")
        else:
            parts.append(f"rtt {rtt * 1000:.2f} ms")
    for name, what in (("keepalive_pings", "keepalive pings from the server"),
                       ("rejected", "packets that did not authenticate"),
                       ("unreadable", "authentic packets not readable here (compressed or fragmented)")):
        if data.get(name):
            parts.append(f"{data[name]} {what}")
    return ["Data channel: " + ", ".join(parts)]
