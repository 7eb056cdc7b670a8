"""One line per OpenVPN packet, like tshark's default output."""

import datetime

from ..protocol import DIGEST_BY_SIZE


def endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def packet_line(record: dict, colour: bool = False) -> str:
    """e.g. ``3  0.001234 127.0.0.1:46328 -> 127.0.0.1:1194 UDP P_CONTROL_V1 kid=0
    sid=88587622 acks=[0] rsid=6a2f01d7 mpid=1 len=1142 tls-auth SHA1 HMAC ok
    [Client Hello]``"""
    get = record.get
    label = get("_label") or (f"{endpoint(record['src'], record['sport'])} -> "
                              f"{endpoint(record['dst'], record['dport'])} {record['transport'].upper()}")
    # %-formatting: measurably cheaper than the f-string format specs on every line
    head = "%6d %11.6f %s" % (record["frame"], record["_relative"], label)
    malformed = get("malformed")
    if "peer_id" in record and malformed is None:  # data: the bulk of a capture, kept short
        return f"{head} {record['opcode']} kid={record['key_id']} peer={record['peer_id']} len={record['length']}"
    parts = [head]
    if "opcode" in record:
        parts.append(f"{record['opcode']} kid={record['key_id']}")
    session_id = get("session_id")
    if session_id is not None:
        parts.append("sid=%08x" % (session_id >> 32))
    if "peer_id" in record:
        parts.append(f"peer={record['peer_id']}")
    acks = get("acks")
    if acks:
        parts.append("acks=[" + ",".join(map(str, acks)) + "]")
        parts.append("rsid=%08x" % (record["remote_session_id"] >> 32))
    message_packet_id = get("message_packet_id")
    if message_packet_id is not None:
        parts.append(f"mpid={message_packet_id}")
    parts.append(f"len={record['length']}")
    wrapping = get("wrapping")
    if wrapping and wrapping != "none":
        label = wrapping if wrapping != "tls-auth" else f"tls-auth {_digest(record['hmac_size'])}"
        if get("dynamic"):
            label = "dynamic " + label
        parts.append(label + _verdict(record, colour))
    tlvs = get("tlvs")
    if tlvs is not None:
        parts.append(", ".join(tlvs))
    tls = get("tls")
    if tls is not None:
        parts.append("[" + ", ".join(tls) + "]")
    if malformed is not None:
        parts.append(_paint("MALFORMED: " + malformed, "\033[31m", colour))
    return " ".join(parts)


def _verdict(record, colour):
    valid = record.get("hmac_valid")
    if valid is None:
        return ""
    word = "tag" if record.get("wrapping", "").startswith("tls-crypt") else "HMAC"
    return " " + (_paint(f"{word} ok", "\033[32m", colour) if valid else _paint(f"{word} BAD", "\033[31m", colour))


def _paint(text, code, colour):
    return f"{code}{text}\033[0m" if colour else text




def _digest(size):
    return DIGEST_BY_SIZE.get(size, f"{size}-byte HMAC")


def utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
