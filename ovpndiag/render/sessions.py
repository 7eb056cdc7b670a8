"""--sessions: one summary per OpenVPN session, for people."""

from .line import digest_name_of, endpoint, utc


def session_text(number: int, summary: dict) -> str:
    wrapping = summary["wrapping"] or "unknown wrapping"
    if wrapping == "tls-auth":
        wrapping = f"tls-auth {digest_name_of(summary['hmac_size'])}"
    lines = [f"Session {number}: {endpoint(summary['client'], summary['client_port'])} -> "
             f"{endpoint(summary['server'], summary['server_port'])} {summary['transport'].upper()}, {wrapping}"]
    ids = [f"client session {summary['client_session_id'] or '?'}",
           f"server session {summary['server_session_id'] or '?'}",
           "key ids " + ", ".join(map(str, summary["key_ids"]))]
    lines.append("  " + "; ".join(ids))
    if summary["first"] is not None:
        lines.append(f"  from {utc(summary['first'])} for {summary['duration']:.3f} s; data channel "
                     + ("reached" if summary["data_channel"] else "NOT reached"))
    for opcode, count in sorted(summary["packets"].items()):
        lines.append(f"  {opcode:<32} {count:>6} packets {summary['bytes'][opcode]:>9} bytes")
    if "hmac_valid" in summary:
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["hmac_valid"].items()))
        lines.append(f"  HMAC/tag checks: {verdicts}")
    if "key_directions" in summary:
        lines.append("  key-direction: " + ", ".join(f"{side} {direction}"
                                                    for side, direction in sorted(summary["key_directions"].items())))
    if summary.get("dynamic_tls_crypt"):
        lines.append("  renegotiation wrapped with dynamic tls-crypt")
    if "wkc_metadata" in summary:
        meta = summary["wkc_metadata"]
        made = f", made {utc(meta['timestamp'])}" if meta.get("timestamp") else ""
        lines.append(f"  tls-crypt-v2 client key metadata type {meta['metadata_type']}{made}")
    if "tls" in summary:
        lines.append("  TLS: " + ", ".join(f"{name} x{count}" if count > 1 else name
                                         for name, count in summary["tls"].items()))
    if "tls_version" in summary:
        lines.append(f"  TLS handshake: {summary['tls_version']}, {summary['tls_cipher_suite']}")
    for side, chain in sorted(summary.get("certificates", {}).items()):
        for certificate in chain:
            if "subject" not in certificate:  # a certificate that could not be parsed says why
                lines.append(f"  {side} certificate: {certificate.get('problem', 'unreadable')}")
                continue
            lines.append(f"  {side} certificate: {certificate['subject']} (issuer {certificate.get('issuer')}, "
                         f"valid {certificate.get('not_before')} to {certificate.get('not_after')})")
    for alert in summary.get("alerts", ()):
        lines.append(f"  TLS alert from {alert}")
    if summary.get("malformed"):
        lines.append(f"  malformed packets: {summary['malformed']}")
    for moved in summary.get("floated_to", ()):
        lines.append(f"  client floated to {endpoint(moved['client'], moved['client_port'])}")
    return "\n".join(lines)
