"""One line per OpenVPN packet, like tshark's default output."""

import datetime


def endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def packet_line(record: dict, colour: bool = False) -> str:
    """e.g. ``3  0.001234 127.0.0.1:46328 -> 127.0.0.1:1194 UDP P_CONTROL_V1 kid=0
    sid=88587622 acks=[0] rsid=6a2f01d7 mpid=1 len=1142 tls-auth SHA1 HMAC ok
    [Client Hello]``"""
    label = record.get("_label") or (f"{endpoint(record['src'], record['sport'])} -> "
                                     f"{endpoint(record['dst'], record['dport'])} {record['transport'].upper()}")
    head = f"{record['frame']:>6} {record['_relative']:>11.6f} {label}"
    if "peer_id" in record and "malformed" not in record:  # data: the bulk of a capture, kept short
        return f"{head} {record['opcode']} kid={record['key_id']} peer={record['peer_id']} len={record['length']}"
    parts = [head]
    if "opcode" in record:
        parts.append(f"{record['opcode']} kid={record['key_id']}")
    if "session_id" in record:
        parts.append(f"sid={record['session_id'] >> 32:08x}")
    if "peer_id" in record:
        parts.append(f"peer={record['peer_id']}")
    if record.get("acks"):
        parts.append("acks=[" + ",".join(map(str, record["acks"])) + "]")
        parts.append(f"rsid={record['remote_session_id'] >> 32:08x}")
    if "message_packet_id" in record:
        parts.append(f"mpid={record['message_packet_id']}")
    parts.append(f"len={record['length']}")
    wrapping = record.get("wrapping")
    if wrapping and wrapping != "none":
        label = wrapping if wrapping != "tls-auth" else f"tls-auth {_digest(record['hmac_size'])}"
        if record.get("dynamic"):
            label = "dynamic " + label
        parts.append(label + _verdict(record, colour))
    if "tlvs" in record:
        parts.append(", ".join(record["tlvs"]))
    if "tls" in record:
        parts.append("[" + ", ".join(record["tls"]) + "]")
    if "malformed" in record:
        parts.append(_paint("MALFORMED: " + record["malformed"], "\033[31m", colour))
    return " ".join(parts)


def _verdict(record, colour):
    valid = record.get("hmac_valid")
    if valid is None:
        return ""
    word = "tag" if record.get("wrapping", "").startswith("tls-crypt") else "HMAC"
    return " " + (_paint(f"{word} ok", "\033[32m", colour) if valid else _paint(f"{word} BAD", "\033[31m", colour))


def _paint(text, code, colour):
    return f"{code}{text}\033[0m" if colour else text


_DIGESTS = {16: "MD5", 20: "SHA1", 28: "SHA224", 32: "SHA256", 48: "SHA384", 64: "SHA512"}


def _digest(size):
    return _DIGESTS.get(size, f"{size}-byte HMAC")


def utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
