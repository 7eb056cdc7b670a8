"""-V: the TLS records and handshake messages a packet completes, as a nested tree
like tshark's "Transport Layer Security" (from ``dissect.tls`` details).

Unlike tshark, which reads each control packet on its own, a message is shown
once, whole, in the packet that completed it, with the message packet-ids of the
packets it came in. Each line is made from what ``TLSStream.details()`` parsed
once per message; certificates come with the fields ``tls.certificate_fields``
read (subject, issuer, serial, validity, key, signature algorithm, extensions).
"""

_CONTENT_NAMES = {20: "Change Cipher Spec", 21: "Alert", 22: "Handshake", 23: "Application Data",
                  24: "Heartbeat"}
_PROTOCOL = {20: "Change Cipher Spec Protocol", 21: "Alert Protocol", 22: "Handshake Protocol",
             23: "Application Data Protocol", 24: "Heartbeat Protocol"}
_COMPRESSION = {0: "null", 1: "DEFLATE"}

def tls_lines(lines, details) -> None:
    lines.append("Transport Layer Security")
    for entry in details:
        lines.extend(_entry_lines(entry))


def _entry_lines(entry):
    content = entry.get("content_type")
    name = entry.get("name")
    protocol = _PROTOCOL.get(content, "Unknown Protocol")
    version = entry.get("record_version")
    first, last = entry.get("packet_ids", (0, 0))
    spans = (f"message packet-id {first}" if first == last else f"message packet-ids {first}-{last}")
    out = [f"    {version} Record Layer: {protocol}: {name}",
           f"        Content Type: {_CONTENT_NAMES.get(content, 'Unknown')} ({content})",
           f"        Version: {version}",
           f"        [In {spans}]"]
    add = out.append
    if content == 22 and not entry.get("encrypted") and entry.get("handshake_type") is not None:
        add(f"        Handshake Protocol: {name}")
        add(f"            Handshake Type: {name} ({entry['handshake_type']})")
        add(f"            Length: {entry.get('length')}")
        _handshake(add, entry)
    elif content == 21 and "level" in entry:
        add(f"        Length: {entry.get('length')}")
        add(f"        Alert Message")
        add(f"            Level: {entry['level']}")
        add(f"            Description: {entry['description']}")
    elif content == 23:
        add(f"        Length: {entry.get('length')}")
        add(f"        Encrypted Application Data: {entry.get('length')} bytes")
    elif entry.get("encrypted"):
        add(f"        Length: {entry.get('length')}")
        add(f"        {protocol}: {name} ({entry.get('length')} bytes)")
    else:
        add(f"        Length: {entry.get('length')}")
    if entry.get("problem"):
        add(f"        [{entry['problem']}]")
    return out


def _handshake(add, entry):
    kind = entry["handshake_type"]
    pad = "            "
    if kind == 1 and "cipher_suite_values" in entry:
        add(f"{pad}Version: {entry['client_version']}")
        add(f"{pad}Session ID Length: {entry['session_id_length']}")
        values = entry["cipher_suite_values"]
        add(f"{pad}Cipher Suites ({len(values)} suite{'s' if len(values) != 1 else ''})")
        named = iter(entry["cipher_suites"])
        for value in values:
            shown = next(named) if (value & 0x0F0F) != 0x0A0A else "Reserved (GREASE)"
            add(f"{pad}    Cipher Suite: {shown} (0x{value:04x})")
        methods = entry["compression_methods"]
        add(f"{pad}Compression Methods ({len(methods)} method{'s' if len(methods) != 1 else ''})")
        for method in methods:
            add(f"{pad}    Compression Method: {_COMPRESSION.get(method, 'Unknown')} ({method})")
        _extensions(add, entry, pad)
        if entry.get("sni") is not None:
            add(f"{pad}[Server Name: {entry['sni']}]")
        add(f"{pad}[Versions offered: {', '.join(entry['versions_offered'])}]")
    elif kind == 2 and "cipher_suite_value" in entry:
        if entry.get("hello_retry_request"):
            add(f"{pad}[Hello Retry Request]")
        add(f"{pad}Version: {entry['legacy_version']}")
        add(f"{pad}Session ID Length: {entry['session_id_length']}")
        add(f"{pad}Cipher Suite: {entry['cipher_suite']} (0x{entry['cipher_suite_value']:04x})")
        method = entry["compression_method"]
        add(f"{pad}Compression Method: {_COMPRESSION.get(method, 'Unknown')} ({method})")
        _extensions(add, entry, pad)
        add(f"{pad}[Negotiated Version: {entry['version']}]")
    elif kind == 11 and "certificate_fields" in entry:
        chain = entry["certificate_fields"]
        add(f"{pad}Certificates ({len(chain)})")
        for number, cert in enumerate(chain, start=1):
            _certificate(add, cert, number, len(chain), pad + "    ")


def _extensions(add, entry, pad):
    extensions = entry.get("extensions") or []
    for kind, name, length, values in extensions:
        add(f"{pad}Extension: {name} (len={length})")
        add(f"{pad}    Type: {name} ({kind})")
        add(f"{pad}    Length: {length}")
        for value in values:
            add(f"{pad}    {value}")


def _certificate(add, cert, number, count, pad):
    subject = cert.get("subject", "?")
    add(f"{pad}Certificate {number} of {count} ({cert['length']} bytes): {subject}")
    pad += "    "
    if "problem" in cert:
        add(f"{pad}[{cert['problem']}]")
        return
    add(f"{pad}Version: {cert['version']}")
    add(f"{pad}Serial Number: {cert['serial']}")
    add(f"{pad}Signature Algorithm: {cert['signature_algorithm']}")
    add(f"{pad}Issuer: {cert['issuer']}")
    add(f"{pad}Validity")
    add(f"{pad}    Not Before: {cert['not_before']}")
    add(f"{pad}    Not After: {cert['not_after']}")
    add(f"{pad}Subject: {subject}")
    add(f"{pad}Subject Public Key: {cert['public_key']}")
    extensions = cert.get("extensions") or []
    if extensions:
        add(f"{pad}Extensions ({len(extensions)})")
        for text in extensions:
            add(f"{pad}    {text}")
