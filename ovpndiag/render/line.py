"""One line per OpenVPN packet, like tshark's default output."""

import datetime
import math

from ..protocol import DIGEST_BY_SIZE


def endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# The line of each kind of packet as one %-format, public so that a fast path (the
# listing's) writes the very same lines. A control packet's by shape: with ACKs (P_ACK_V1
# has no message packet-id), without, or with neither visible (tls-crypt without its key);
# each takes (frame, relative time, direction_label, opcode name, key id, short_id(session
# id), acks, short_id(remote session id), message packet-id, length) - the ACKs and remote
# session id only where shown; the trailing %.0s swallows the packet-id a shape does not show.
# P_DATA_V2: (frame, relative time, label, opcode name, key id, peer id, length); a packet of
# which only opcode and key id are shown (P_DATA_V1, an unknown opcode): the same without peer id.
_HEAD = "%6d %11.6f %s %s kid=%d sid=%s"
CONTROL_ACKS_LINE = _HEAD + " acks=[%s] rsid=%s mpid=%d len=%d"
ACK_LINE = _HEAD + " acks=[%s] rsid=%s%.0s len=%d"
CONTROL_LINE = _HEAD + " mpid=%d len=%d"
OPAQUE_LINE = _HEAD + "%.0s len=%d"
DATA_V2_LINE = "%6d %11.6f %s %s kid=%d peer=%d len=%d"
OPCODE_LINE = "%6d %11.6f %s %s kid=%d len=%d"
_SHORT_IDS_MAX = 1 << 16


class _ShortIds(dict):
    """session id -> the hex of its first 4 bytes, as lines show it: made once per session."""

    def __missing__(self, session_id):
        if len(self) >= _SHORT_IDS_MAX:
            self.clear()
        text = self[session_id] = "%08x" % (session_id >> 32)
        return text


_SHORT_IDS = _ShortIds()
short_id = _SHORT_IDS.__getitem__  # short_id(session_id) -> e.g. "88587622"


def packet_line(record, colour: bool = False, label: str = None) -> str:
    """e.g. ``3  0.001234 127.0.0.1:46328 -> 127.0.0.1:1194 UDP P_CONTROL_V1 kid=0
    sid=88587622 acks=[0] rsid=6a2f01d7 mpid=1 len=1142 tls-auth SHA1 HMAC ok
    [Client Hello]`` (``record``: a dissect.record.Record; ``label``: its
    direction_label, when the caller has it at hand)"""
    # This runs for every packet of captures of millions: %-formatting (cheaper than
    # f-string format specs), few lookups, the wrapping's words made once per kind.
    if label is None:
        label = direction_label(record.src, record.dst, record.sport, record.dport, record.transport)
    malformed = record.malformed
    session_id = record.session_id
    if session_id is not None:  # a control packet: its common fields in one format
        sid = short_id(session_id)
        acks = record.acks
        message_packet_id = record.message_packet_id
        if acks:
            remote = record.remote_session_id
            line = (CONTROL_ACKS_LINE if message_packet_id is not None else ACK_LINE) % (
                record.frame, record.relative_time, label, record.opcode, record.key_id, sid,
                ",".join(map(str, acks)) if len(acks) > 1 else acks[0],
                short_id(remote), message_packet_id, record.length)
        else:
            line = (CONTROL_LINE if message_packet_id is not None else OPAQUE_LINE) % (
                record.frame, record.relative_time, label, record.opcode, record.key_id, sid,
                message_packet_id, record.length)
    elif record.peer_id is not None:  # data: the bulk of a capture, kept short
        line = DATA_V2_LINE % (
            record.frame, record.relative_time, label, record.opcode, record.key_id, record.peer_id,
            record.length)
        if malformed is None:
            return line
    elif record.opcode is not None:
        line = OPCODE_LINE % (record.frame, record.relative_time, label, record.opcode, record.key_id,
                               record.length)
    else:
        line = "%6d %11.6f %s len=%d" % (record.frame, record.relative_time, label, record.length)
    wrapping = record.wrapping
    if wrapping and wrapping != "none":
        key = (wrapping, record.hmac_size, record.dynamic, record.hmac_valid, colour)
        line += _WRAPPING_WORDS.get(key) or wrapping_words(*key)
    tlvs = record.tlvs
    if tlvs is not None:
        line += " " + ", ".join(tlvs)
    tls = record.tls
    if tls is not None:
        line += " [" + ", ".join(tls) + "]"
    if malformed is not None:
        line += " " + _paint("MALFORMED: " + malformed, "\033[31m", colour)
    return line


_LABELS = {}  # (src, dst, sport, dport, transport) -> e.g. "10.0.0.1:40000 -> 10.0.0.2:1194 UDP"
_LABELS_MAX = 1 << 16


def direction_label(src, dst, sport, dport, transport) -> str:
    """One direction of a flow as lines show it, e.g. ``10.0.0.1:40000 -> 10.0.0.2:1194 UDP``."""
    ends = (src, dst, sport, dport, transport)
    label = _LABELS.get(ends)
    if label is None:  # (a flow's packets repeat it: made once)
        if len(_LABELS) >= _LABELS_MAX:
            _LABELS.clear()
        label = _LABELS[ends] = f"{endpoint(src, sport)} -> {endpoint(dst, dport)} {transport.upper()}"
    return label


_WRAPPING_WORDS = {}  # (wrapping, hmac_size, dynamic, hmac_valid, colour) -> e.g. " tls-auth SHA1 HMAC ok"


def wrapping_words(wrapping: str, hmac_size=None, dynamic=None, valid=None, colour: bool = False) -> str:
    """What a wrapped packet's line ends with, e.g. `` tls-auth SHA1 HMAC ok`` (``wrapping``:
    its kind; ``valid``: the HMAC or tag verdict, None unchecked); made once per combination."""
    key = (wrapping, hmac_size, dynamic, valid, colour)
    words = _WRAPPING_WORDS.get(key)
    if words is not None:
        return words
    words = " " + ("dynamic " if dynamic else "") + (
        wrapping if wrapping != "tls-auth" else f"tls-auth {digest_name_of(hmac_size)}")
    if valid is not None:
        word = "tag" if wrapping.startswith("tls-crypt") else "HMAC"
        words += " " + (_paint(f"{word} ok", "\033[32m", colour) if valid
                        else _paint(f"{word} BAD", "\033[31m", colour))
    _WRAPPING_WORDS[key] = words
    return words


def _paint(text, code, colour):
    return f"{code}{text}\033[0m" if colour else text


def digest_name_of(size):
    """tls-auth's digest as lines name it, from its HMAC size: SHA1, or "24-byte HMAC"."""
    return DIGEST_BY_SIZE.get(size, f"{size}-byte HMAC")


_EPOCH = datetime.datetime(1970, 1, 1)
_GREGORIAN_CYCLE = 146097 * 86400  # 400 years: the calendar repeats exactly, leap days and all
# glibc's gmtime, which tshark uses, keeps the year - 1900 in a C int; beyond that tshark
# shows "Not representable" (or, just before, a year wrapped around).
_YEARS = range(1900 - 2 ** 31, 1900 + 2 ** 31)


def utc_text(seconds) -> str:
    """``utc`` of a whole second, each made once (a capture spans few seconds; a busy one has
    many packets and sessions in each)."""
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        text = _SECONDS[seconds] = utc(seconds)
    return text


_SECONDS = {}  # whole second -> its utc() text


def utc(seconds):
    """``2026-11-25 13:37:27 UTC`` (whole seconds, rounded down) for a time of any year, as
    tshark writes the year: ``0056``, ``-1142``, ``33715`` (the proleptic Gregorian calendar
    with a year 0, as glibc counts); ``time not representable`` past a C int of years."""
    whole = math.floor(getattr(seconds, "exact", seconds))  # an Instant: its exact time
    cycles, rest = divmod(whole, _GREGORIAN_CYCLE)  # into 1970..2369, where datetime works
    stamp = _EPOCH + datetime.timedelta(seconds=rest)
    year = stamp.year + 400 * cycles
    if year not in _YEARS:
        return "time not representable"
    return "%04d-%02d-%02d %02d:%02d:%02d UTC" % (year, stamp.month, stamp.day, stamp.hour, stamp.minute,
                                                  stamp.second)
