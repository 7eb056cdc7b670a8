"""The TLS inside OpenVPN's control channel, one direction of one session at a time.

OpenVPN cuts its TLS byte stream into P_CONTROL_V1 (and P_CONTROL_WKC_V1) payloads of
about 1250 bytes, numbered by message packet-id per direction and key_id (1, 2, ...;
0 is the reset), retransmits what is not ACKed, and may deliver out of order.
``TLSStream`` puts the payloads back in packet-id order (retransmissions counted and
dropped, packets after a gap held until it fills) and names the TLS records and
handshake messages as they complete, the way tshark names them. Wireshark does not:
it takes only a 100-byte payload as a fragment with more to come (packet-openvpn.c),
so it hands every control packet of today's OpenVPN to its TLS dissector on its own
(in arrival order, retransmissions included). A record that continues into the next
packet is shown there as "Continuation Data" or "Ignored Unknown Record" (tshark 4.0),
and the records after it in that packet are lost.

Two speeds:

* ``add()`` is the fast path, run for every control packet of a capture: struct-free
  byte indexing of record headers (content type, version, 16-bit length) and
  handshake headers (type, 24-bit length; several messages may share a record, and
  one message may span records and packets). No Scapy. Memory per stream is bounded:
  only an incomplete record is buffered (at most one record, 18 KiB; with
  ``details=False``, as the listing asks, only a handshake record or a 2-byte alert:
  the body of any other record is skipped, its name needs none of it), at most
  ``max_held_packets`` / ``max_held_bytes`` wait behind a gap, and only the few
  handshake messages ``details()`` reads are kept (capped, see ``KEEP_*``).
  A stream that cannot be followed (bytes that are not TLS, a record longer than TLS
  allows, a gap that never fills) is marked ``broken`` with the reason, and names
  nothing more.
* ``details()`` is computed on request only (``-V``, ``--sessions``): one dict per
  completed record / handshake message, in stream order, each parsed once (hellos by
  a small length-checked reader here, certificates with ``cryptography.x509``, cached
  by their bytes; Scapy only for the cipher suite names).

Keys of a ``details()`` dict (absent when they do not apply):

``frame``           capture frame in which the message became complete (the frame given
                    to the ``add()`` call that completed it, e.g. the one filling a gap)
``name``            the name ``add()`` returned, e.g. ``"Server Hello"``
``content_type``    TLS record content type (20 change_cipher_spec, 21 alert,
                    22 handshake, 23 application_data, 24 heartbeat)
``record_version``  record-layer version of the (first) record, e.g. ``"TLS 1.2"``
``handshake_type``  handshake message type (handshake messages only)
``length``          handshake message body length, or record length for other records
``packet_ids``      ``[first, last]`` message packet-ids of the control packets it spans
``encrypted``       true when its content cannot be read without the TLS keys
``client_version``  ClientHello: legacy_version, e.g. ``"TLS 1.2"``
``versions_offered`` ClientHello: supported_versions extension, else [client_version]
``cipher_suites``   ClientHello: suites offered, by IANA name (``"0x1234"`` if unknown)
``sni``             ClientHello: server_name, when there is one
``version``         ServerHello: version chosen (supported_versions when present, so
                    ``"TLS 1.3"``; else legacy_version)
``cipher_suite``    ServerHello: suite chosen, by name
``hello_retry_request`` ServerHello: true when it is a HelloRetryRequest
``certificates``    Certificate: list of ``{"subject", "issuer", "not_before",
                    "not_after"}`` (RFC 4514 names, ISO 8601 UTC times), leaf first
``certificate_fields`` Certificate, for -V: ``certificate_fields()`` of each, leaf first
``session_id_length``, ``compression_methods`` / ``compression_method``,
``cipher_suite_values`` / ``cipher_suite_value``, ``legacy_version`` (ServerHello),
``extensions``      hellos, for -V: ``(type, name, length, [strings])`` per extension
``level``           Alert: ``"Warning"`` / ``"Fatal"``
``description``     Alert: e.g. ``"Unknown CA"``
``problem``         why the message's content could not be shown (truncated, over the
                    keep cap, not parseable)

Raw record bytes, randoms, session ids, key shares and signatures are never put into
details; nothing here is secret anyway (the control channel carries no keys in clear).
"""

from bisect import bisect_right
from struct import Struct
from typing import Dict, List, Optional

__all__ = ["TLSStream", "tls_names", "HANDSHAKE_NAMES", "ALERT_DESCRIPTIONS", "server_hello_fields", "certificate_chain"]

MAX_RECORD = 2 ** 14 + 2048       # TLSCiphertext.length limit (RFC 5246 6.2.3)
KEEP_MESSAGE = 64 * 1024          # handshake bodies kept for details(), per message
KEEP_TOTAL = 256 * 1024           # ... and per stream
KEEP_ENTRIES = 256                # completed messages remembered for details()

CONTENT_NAMES = {20: "Change Cipher Spec", 21: "Alert", 22: "Handshake",
                 23: "Application Data", 24: "Heartbeat"}

# Wireshark's ssl_31_handshake_type (packet-tls-utils.c), by value.
HANDSHAKE_NAMES = {
    0: "Hello Request", 1: "Client Hello", 2: "Server Hello", 3: "Hello Verify Request",
    4: "New Session Ticket", 5: "End of Early Data", 6: "Hello Retry Request",
    8: "Encrypted Extensions", 11: "Certificate", 12: "Server Key Exchange",
    13: "Certificate Request", 14: "Server Hello Done", 15: "Certificate Verify",
    16: "Client Key Exchange", 20: "Finished", 21: "Client Certificate URL",
    22: "Certificate Status", 23: "Supplemental Data", 24: "Key Update",
    25: "Compressed Certificate", 254: "Message Hash",
}

ALERT_LEVELS = {1: "Warning", 2: "Fatal"}
# Wireshark's ssl_31_alert_description.
ALERT_DESCRIPTIONS = {
    0: "Close Notify", 1: "End of Early Data", 10: "Unexpected Message", 20: "Bad Record MAC",
    21: "Decryption Failed", 22: "Record Overflow", 30: "Decompression Failure",
    40: "Handshake Failure", 41: "No Certificate", 42: "Bad Certificate",
    43: "Unsupported Certificate", 44: "Certificate Revoked", 45: "Certificate Expired",
    46: "Certificate Unknown", 47: "Illegal Parameter", 48: "Unknown CA", 49: "Access Denied",
    50: "Decode Error", 51: "Decrypt Error", 60: "Export Restriction", 70: "Protocol Version",
    71: "Insufficient Security", 80: "Internal Error", 86: "Inappropriate Fallback",
    90: "User Canceled", 100: "No Renegotiation", 109: "Missing Extension",
    110: "Unsupported Extension", 111: "Certificate Unobtainable", 112: "Unrecognized Name",
    113: "Bad Certificate Status Response", 114: "Bad Certificate Hash Value",
    115: "Unknown PSK Identity", 116: "Certificate Required", 120: "No application Protocol",
}

VERSION_NAMES = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
                 0x0304: "TLS 1.3"}

ENCRYPTED_HANDSHAKE = "Encrypted Handshake Message"
CLIENT_HELLO, SERVER_HELLO, CERTIFICATE = 1, 2, 11
_KEPT_TYPES = (CLIENT_HELLO, SERVER_HELLO, CERTIFICATE)  # what details() reads
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def version_name(value: int) -> str:
    if 0x7F00 <= value <= 0x7FFF:
        return f"TLS 1.3 (draft {value & 0xFF})"
    return VERSION_NAMES.get(value, f"0x{value:04x}")


def alert_name(level: int, description: int) -> str:
    """An alert as tshark's Info column shows it."""
    return (f"Alert (Level: {ALERT_LEVELS.get(level, f'Unknown ({level})')}, "
            f"Description: {ALERT_DESCRIPTIONS.get(description, f'Unknown ({description})')})")


# A completed record or handshake message is kept for details() as a plain tuple
# (cheaper than an object on the fast path): (frame, name, content_type, version,
# handshake_type, length, first_pid, last_pid, encrypted, body, problem).
_NAME = 1
_NO_MARKS = [(0, 0)]  # shared, never appended to: _feed starts a new list for a new record
_RECORD_HEADER = Struct("!BBBH").unpack_from  # content type, version (major, minor), length


class TLSStream:
    """The TLS byte stream of one direction of one OpenVPN session (one key_id).

    ``add(message_packet_id, payload, frame)`` for every P_CONTROL_V1 / P_CONTROL_WKC_V1
    payload of that direction, in capture order; it returns the names of what that
    packet completed. Attributes: ``retransmissions`` (packets whose packet-id was seen
    before), ``broken`` (None, or why the stream cannot be followed), ``held`` (packets
    waiting behind a gap), ``next_packet_id`` (the packet-id the stream waits for),
    ``consumed`` (bytes of complete records read), ``pending`` (bytes of an incomplete
    record), ``omitted`` (completed messages beyond ``KEEP_ENTRIES``, named but not kept).

    Packet-ids below ``first_packet_id`` (the reset's 0) are not part of the TLS stream:
    ignored, not counted. When
    ``max_held_packets`` or ``max_held_bytes`` is exceeded the gap is given up: the stream
    is broken, and packets up to the highest packet-id seen count as retransmissions.
    With ``details=False`` only names are made: nothing is kept for ``details()``.
    """

    # (a stream per direction of every session: slots make one cheaper to make and to hold)
    __slots__ = ("first_packet_id", "next_packet_id", "max_held_packets", "max_held_bytes",
                 "retransmissions", "broken", "omitted", "consumed", "_held", "_held_bytes", "_buf",
                 "_marks", "_ccs", "_hs_head", "_hs_type", "_hs_need", "_hs_len", "_hs_body", "_hs_pid",
                 "_hs_version", "_kept", "_items", "_entries", "_keep_entries", "_kept_types", "_marking",
                 "_skip", "_skipped")

    def __init__(self, first_packet_id: int = 1, max_held_packets: int = 64,
                 max_held_bytes: int = 256 * 1024, details: bool = True):
        self.first_packet_id = self.next_packet_id = first_packet_id
        self.max_held_packets = max_held_packets
        self.max_held_bytes = max_held_bytes
        self.retransmissions = 0
        self.broken: Optional[str] = None
        self.omitted = 0
        self._held: Dict[int, bytes] = {}
        self._held_bytes = 0
        self._buf = bytearray()      # bytes of the record not yet complete
        self._marks = _NO_MARKS      # (offset in _buf, packet-id) where each packet's bytes begin
        self.consumed = 0            # bytes of complete records read (stream offset of _buf[0])
        self._ccs = False            # a Change Cipher Spec was sent: handshake is encrypted
        # handshake message being reassembled across records
        self._hs_head = bytearray()  # its header while shorter than 4 bytes
        self._hs_type = -1           # its type once the header is complete, else -1
        self._hs_need = 0            # body bytes still to come
        self._hs_len = 0
        self._hs_body: Optional[bytearray] = None  # kept for details(), else None
        self._hs_pid = 0
        self._hs_version = 0
        self._kept = 0
        self._items: List[tuple] = []
        self._entries: List[dict] = []  # details() of _items, each made once (they never change)
        # details=False (a plain listing): names only, nothing kept for details(), which
        # then returns [] (every completed message counts as omitted).
        self._keep_entries = KEEP_ENTRIES if details else 0
        self._kept_types = _KEPT_TYPES if details else ()
        self._marking = details  # packet-ids of buffered bytes: only kept items name them
        # details=False: a record whose name needs none of its body (application data,
        # change cipher spec, heartbeat, an encrypted alert) is not buffered across
        # packets but skipped: _skip bytes still to come, then _skipped names it.
        self._skip = 0
        self._skipped = None         # (content type, version, length) of the skipped record

    # ------------------------------------------------------------------ fast path

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def pending(self) -> int:
        if self._skip:
            return 5 + self._skipped[2] - self._skip
        return len(self._buf)

    def add(self, message_packet_id: int, payload: bytes, frame: int = 0) -> List[str]:
        """Feed one control packet's payload. Returns the names of the TLS records /
        handshake messages this packet completes, in stream order (tshark's names).
        A retransmission returns [] and is counted; a packet after a gap is held until
        the gap fills, and the names it completes come from the add() that fills it.
        Never raises."""
        pid = message_packet_id
        if pid < self.next_packet_id or pid in self._held:
            if pid >= self.first_packet_id:
                self.retransmissions += 1
            return []
        if pid > self.next_packet_id:
            self._hold(pid, payload)
            return []
        names: List[str] = []
        self._feed(pid, payload, frame, names)
        pid += 1
        held = self._held
        while pid in held:
            data = held.pop(pid)
            self._held_bytes -= len(data)
            self._feed(pid, data, frame, names)
            pid += 1
        self.next_packet_id = pid
        return names

    def _hold(self, pid: int, payload: bytes) -> None:
        data = b"" if self.broken else bytes(payload)
        self._held[pid] = data
        self._held_bytes += len(data)
        if len(self._held) > self.max_held_packets or self._held_bytes > self.max_held_bytes:
            if not self.broken:
                self._break(f"message packet-id {self.next_packet_id} never arrived "
                            f"({len(self._held)} packets, {self._held_bytes} bytes held after it)")
            # Give up on the gap: later packets count as retransmissions up to the highest seen.
            self.next_packet_id = max(self._held) + 1
            self._held.clear()
            self._held_bytes = 0

    def _break(self, reason: str) -> None:
        self.broken = reason
        self._buf = bytearray()
        self._skip = 0
        self._marks = _NO_MARKS
        self._hs_body = None
        for pid in self._held:
            self._held[pid] = b""
        self._held_bytes = 0

    def _feed(self, pid: int, payload: bytes, frame: int, names: List[str]) -> None:
        if self.broken or not payload:
            return
        skip = self._skip
        if skip:  # (details=False) the rest of a record whose body no name needs
            if len(payload) < skip:
                self._skip = skip - len(payload)
                return
            self._skip = 0
            content_type, version, length = self._skipped
            self.consumed += 5 + length
            self._body_free(names, frame, pid, content_type, version, length)
            if len(payload) == skip:
                return
            payload = payload[skip:]
        buf = self._buf
        marking = self._marking
        if buf:
            if marking:
                self._marks.append((len(buf), pid))
            buf += payload
        else:
            buf = payload if type(payload) is bytes else bytes(payload)  # never the caller's buffer
            if marking:
                self._marks = [(0, pid)]
        marks = self._marks
        items = self._items
        size = len(buf)
        pos = 0
        while size - pos >= 5:
            content_type, major, minor, length = _RECORD_HEADER(buf, pos)
            version = major << 8 | minor
            if not 20 <= content_type <= 24 or major != 3 or minor > 4:
                self._break(f"not TLS at stream offset {self.consumed + pos}: content type "
                            f"{content_type}, version 0x{version:04x}")
                return
            if length > MAX_RECORD:
                self._break(f"record length {length} at stream offset {self.consumed + pos} "
                            f"exceeds {MAX_RECORD}")
                return
            end = pos + 5 + length
            if end > size:
                if not marking and (content_type != 22 and (content_type != 21 or length != 2)):
                    # Names only, and this record's name needs no byte of its body: skip it.
                    self.consumed += pos
                    self._skip, self._skipped = end - size, (content_type, version, length)
                    self._buf, self._marks = b"", _NO_MARKS
                    return
                break
            if content_type == 23:  # the common case, inlined
                names.append("Application Data")
                if len(items) < self._keep_entries:
                    items.append((frame, "Application Data", 23, version, None, length,
                                  self._pid_at(pos), pid, True, None, None))
                else:
                    self.omitted += 1
            elif content_type == 22:
                self._handshake(buf, pos + 5, end, version, pid, frame, names)
            else:
                first_pid = self._pid_at(pos)
                if content_type == 20:
                    self._ccs = True
                    self._item(names, frame, "Change Cipher Spec", 20, version, None, length,
                               first_pid, pid, False)
                elif content_type == 21:
                    if length == 2:
                        level, description = buf[pos + 5], buf[pos + 6]
                        self._item(names, frame, alert_name(level, description), 21, version,
                                   None, length, first_pid, pid, False, bytes((level, description)))
                    else:
                        self._item(names, frame, "Encrypted Alert", 21, version, None, length,
                                   first_pid, pid, True)
                else:
                    self._item(names, frame, "Encrypted Heartbeat" if self._ccs else "Heartbeat",
                               24, version, None, length, first_pid, pid, self._ccs)
            pos = end
        self.consumed += pos
        if pos == size:
            self._buf = b""  # (an empty buffer is never appended to: _feed starts anew)
            self._marks = _NO_MARKS
        elif pos == 0 and isinstance(buf, bytearray):
            self._buf = buf  # still one incomplete record: nothing to copy
        else:
            if isinstance(buf, bytearray):
                del buf[:pos]
                self._buf = buf
            else:
                self._buf = bytearray(buf[pos:])
            if marking:
                # Keep the marks of the packets whose bytes are still buffered: from the last
                # one that starts at or before pos (offsets only grow) to the end.
                first = bisect_right(marks, (pos, 1 << 64)) - 1
                self._marks = [(max(0, off - pos), q) for off, q in marks[first:]]

    def _body_free(self, names, frame, pid, content_type, version, length) -> None:
        """Name a skipped record (as _feed's loop names it; nothing of it is kept)."""
        if content_type == 23:
            name = "Application Data"
        elif content_type == 20:
            self._ccs = True
            name = "Change Cipher Spec"
        elif content_type == 21:
            name = "Encrypted Alert"
        else:
            name = "Encrypted Heartbeat" if self._ccs else "Heartbeat"
        self._item(names, frame, name, content_type, version, None, length, pid, pid,
                   content_type != 20 and (content_type != 24 or self._ccs))

    def _pid_at(self, pos: int) -> int:
        """The packet-id of the packet that brought buffered byte ``pos``."""
        marks = self._marks
        if len(marks) == 1:
            return marks[0][1]
        return marks[max(0, bisect_right(marks, (pos, 1 << 64)) - 1)][1]

    def _handshake(self, buf, pos: int, end: int, version: int, pid: int, frame: int,
                   names: List[str]) -> None:
        pending = self._hs_type >= 0 or self._hs_head
        if self._ccs and not pending and not _plain_handshake(buf, pos, end):
            # After Change Cipher Spec a handshake record is encrypted (TLS 1.2 Finished),
            # unless it is a whole run of well-formed messages (a ClientHello sent after
            # a TLS 1.3 middlebox-compatibility CCS, following a HelloRetryRequest).
            self._item(names, frame, ENCRYPTED_HANDSHAKE, 22, version, None, end - pos,
                       self._pid_at(pos - 5), pid, True)
            return
        if pending:
            pos = self._continue_message(buf, pos, end, pid, frame, names)
            if pos < 0:
                return
        first = not pending
        while end - pos >= 4:
            msg_type = buf[pos]
            length = buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]
            if msg_type not in HANDSHAKE_NAMES:
                if first:  # as tshark: an unreadable first message is encrypted data
                    self._item(names, frame, ENCRYPTED_HANDSHAKE, 22, version, None, end - pos,
                               self._pid_at(pos), pid, True)
                return  # the rest of this record is not followed
            stop = pos + 4 + length
            if stop > end:
                break  # continues in the next record
            body = problem = None
            if msg_type in self._kept_types:
                body, problem = self._keep(buf, pos + 4, stop, length)
            self._item(names, frame, HANDSHAKE_NAMES[msg_type], 22, version, msg_type, length,
                       self._pid_at(pos), pid, False, body, problem)
            pos = stop
            first = False
        if pos < end:  # a message (or just its header) continues in the next record
            self._hs_pid, self._hs_version = self._pid_at(pos), version
            self._continue_message(buf, pos, end, pid, frame, names)

    def _continue_message(self, buf, pos: int, end: int, pid: int, frame: int,
                          names: List[str]) -> int:
        """Take a handshake message spanning records: its header, then its body. Returns
        where the record goes on once the message is complete, or -1 (record used up)."""
        if self._hs_type < 0:
            head = self._hs_head
            take = min(4 - len(head), end - pos)
            head += buf[pos:pos + take]
            pos += take
            if len(head) < 4:
                return -1
            msg_type, length = head[0], head[1] << 16 | head[2] << 8 | head[3]
            self._hs_head = bytearray()
            if msg_type not in HANDSHAKE_NAMES:
                return -1  # lost: the rest of this record is not followed
            self._hs_type, self._hs_len, self._hs_need = msg_type, length, length
            self._hs_body = None
            if msg_type in self._kept_types and self._fits(length):
                self._hs_body = bytearray()
                self._kept += length
        take = min(self._hs_need, end - pos)
        if take:
            if self._hs_body is not None:
                self._hs_body += buf[pos:pos + take]
            self._hs_need -= take
            pos += take
        if self._hs_need:
            return -1
        msg_type, body = self._hs_type, self._hs_body
        problem = None
        if body is None and msg_type in self._kept_types:
            problem = self._cap_problem()
        self._item(names, frame, HANDSHAKE_NAMES[msg_type], 22, self._hs_version, msg_type,
                   self._hs_len, self._hs_pid, pid, False,
                   bytes(body) if body is not None else None, problem)
        self._hs_type, self._hs_body = -1, None
        return pos

    def _fits(self, length: int) -> bool:
        return (length <= KEEP_MESSAGE and self._kept + length <= KEEP_TOTAL
                and len(self._items) < self._keep_entries)

    def _keep(self, buf, start: int, stop: int, length: int):
        """(body, problem) of a whole message details() will read, within the caps."""
        if not self._fits(length):
            return None, self._cap_problem()
        self._kept += length
        return bytes(buf[start:stop]), None

    @staticmethod
    def _cap_problem() -> str:
        return f"not kept: over the cap of {KEEP_MESSAGE} bytes per message, {KEEP_TOTAL} per stream"

    def _item(self, names, frame, name, content_type, version, handshake_type, length,
              first_pid, last_pid, encrypted, body=None, problem=None) -> None:
        names.append(name)
        if len(self._items) < self._keep_entries:
            self._items.append((frame, name, content_type, version, handshake_type, length,
                                first_pid, last_pid, encrypted, body, problem))
        else:
            self.omitted += 1

    # ------------------------------------------------------------------ details

    def names(self) -> List[str]:
        """The names of everything completed so far (as far as kept), in stream order."""
        return [item[_NAME] for item in self._items]

    def details(self) -> List[dict]:
        """One dict per completed record / handshake message, in stream order (keys in
        the module docstring). Each message is parsed once; never raises. The dicts are
        shared between calls: read them, do not change them."""
        entries = self._entries
        entries.extend(_detail(item) for item in self._items[len(entries):])
        return list(entries)

    def facts(self) -> List[dict]:
        """What --sessions reads: details() of the Server Hellos, Certificates and alerts
        only (the same dicts), without parsing the Client Hellos it does not read."""
        if len(self._entries) == len(self._items):  # (all parsed already, for -V)
            return [entry for entry in self._entries if entry["content_type"] == 21
                    or entry.get("handshake_type") in (SERVER_HELLO, CERTIFICATE)]
        return [_detail(item) for item in self._items
                if item[2] == 21 or item[4] in (SERVER_HELLO, CERTIFICATE)]  # content type, handshake type


def server_choice(stream: "TLSStream"):
    """(version, cipher suite name) the stream's ServerHello chose, read from it alone
    (analyze asks it of every session; details() would parse every field for -V); None
    when there is none or it cannot be read."""
    for item in stream._items:
        if item[4] == SERVER_HELLO and item[9] is not None and not item[10]:  # (handshake type, body, problem)
            body = item[9]
            try:
                at = 35 + body[34]  # legacy version, random, session id
                version, suite = int.from_bytes(body[:2], "big"), int.from_bytes(body[at:at + 2], "big")
                at += 3
                end = min(len(body), at + 2 + int.from_bytes(body[at:at + 2], "big"))
                at += 2
                while at + 4 <= end:
                    kind, size = int.from_bytes(body[at:at + 2], "big"), int.from_bytes(body[at + 2:at + 4], "big")
                    if kind == 43 and size == 2:
                        version = int.from_bytes(body[at + 4:at + 6], "big")
                    at += 4 + size
            except IndexError:
                return None
            return version_name(version), _suite_name(suite)
    return None


def _detail(item) -> dict:
    """details()' dict for one kept record or handshake message."""
    (frame, name, content_type, version, handshake_type, length, first_pid, last_pid,
     encrypted, body, problem) = item
    entry = {"frame": frame, "name": name, "content_type": content_type,
             "record_version": version_name(version)}
    if handshake_type is not None:
        entry["handshake_type"] = handshake_type
    entry["length"] = length
    entry["packet_ids"] = [first_pid, last_pid]
    entry["encrypted"] = encrypted
    if problem:
        entry["problem"] = problem
    elif body is not None:
        try:
            if content_type == 21:
                entry["level"] = ALERT_LEVELS.get(body[0], f"Unknown ({body[0]})")
                entry["description"] = ALERT_DESCRIPTIONS.get(body[1], f"Unknown ({body[1]})")
            elif handshake_type == CLIENT_HELLO:
                entry.update(_client_hello(body, length))
            elif handshake_type == SERVER_HELLO:
                entry.update(_server_hello(body, length))
            elif handshake_type == CERTIFICATE:
                entry.update(_certificates(body))
        except Exception as exc:  # a parser's complaint is a finding, not a crash
            entry["problem"] = f"cannot parse {name}: {type(exc).__name__}: {exc}"[:200]
    return entry


def tls_names(payloads) -> List[str]:
    """Names of everything in an iterable of in-order control payloads (a convenience)."""
    stream = TLSStream()
    names: List[str] = []
    for pid, payload in enumerate(payloads, start=1):
        names += stream.add(pid, payload)
    return names


def _plain_handshake(buf, pos: int, end: int) -> bool:
    """True when buf[pos:end] is exactly a run of complete handshake messages of known types."""
    if pos >= end:
        return False
    while pos < end:
        if end - pos < 4 or buf[pos] not in HANDSHAKE_NAMES:
            return False
        pos += 4 + (buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3])
    return pos == end


# ---------------------------------------------------------------------- lazy parsers

def _suite_name(value: int) -> str:
    from .tlssuites import NAMES  # (built in: Scapy's TLS package costs 0.25 s and 30 MB to import)
    return NAMES.get(value, f"0x{value:04x}")


def _grease(value: int) -> bool:
    """RFC 8701 values (0x0A0A, 0x1A1A, ...) a client sends to keep servers tolerant."""
    return (value & 0x0F0F) == 0x0A0A


class _Cursor:
    """Reads a handshake body front to back; running past its end is a ValueError."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None):
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def take(self, size: int, what: str) -> bytes:
        stop = self.pos + size
        if stop > self.end:
            raise ValueError(f"{what} runs past the end ({size} bytes at offset {self.pos} of {self.end})")
        chunk = self.data[self.pos:stop]
        self.pos = stop
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size_bytes: int, what: str) -> bytes:
        return self.take(self.number(size_bytes, what + " length"), what)

    @property
    def left(self) -> int:
        return self.end - self.pos


def _u16s(data: bytes) -> List[int]:
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2)]


def _extensions(cursor: "_Cursor") -> List[tuple]:
    """(type, body) of each extension, when the message has an extensions block."""
    if not cursor.left:
        return []
    block = _Cursor(cursor.vector(2, "extensions"))
    found = []
    while block.left:
        kind = block.number(2, "extension type")
        found.append((kind, block.vector(2, f"extension {kind}")))
    if cursor.left:
        raise ValueError(f"{cursor.left} bytes after the extensions")
    return found


def _client_hello(body: bytes, length: int) -> dict:
    """A ClientHello's fields: the summary keys (client_version, versions_offered,
    cipher_suites, sni) and, for -V, ``session_id_length``, ``cipher_suite_values``,
    ``compression_methods`` and ``extensions`` (see ``_extension``)."""
    cursor = _Cursor(body)
    client_version = cursor.number(2, "version")
    cursor.take(32, "random")
    session_id = cursor.vector(1, "session id")
    suites = _u16s(cursor.vector(2, "cipher suites"))
    compression = list(cursor.vector(1, "compression methods"))
    extensions = _extensions(cursor)
    out = {"client_version": version_name(client_version)}
    offered = sni = None
    for kind, data in extensions:
        if kind == 43 and offered is None:
            offered = [version_name(v) for v in _u16s(_Cursor(data).vector(1, "supported_versions"))
                       if not _grease(v)]
        elif kind == 0 and sni is None:
            names = _Cursor(_Cursor(data).vector(2, "server_name list"))
            while names.left and sni is None:
                name_type, name = names.number(1, "name type"), names.vector(2, "server name")
                if name_type == 0 and name:
                    sni = name.decode("ascii", "replace")
    out["versions_offered"] = offered if offered is not None else [version_name(client_version)]
    out["cipher_suites"] = _shared(("names", tuple(suites)),
                                   lambda: [_suite_name(s) for s in suites if not _grease(s)])
    if sni is not None:
        out["sni"] = sni
    out["session_id_length"] = len(session_id)
    out["cipher_suite_values"] = _shared(("values", tuple(suites)), lambda: suites)
    out["compression_methods"] = compression
    out["extensions"] = [_shared_extension(kind, data, True) for kind, data in extensions]
    return out


_SHARED: Dict[object, object] = {}  # what many sessions' hellos repeat, made once and shared (read-only)
_SHARED_MAX = 4096


def _shared(key, make):
    """``make()``, or the equal value already made for ``key``: a capture of thousands of
    sessions holds one copy of the suite lists and extensions their hellos repeat."""
    value = _SHARED.get(key)
    if value is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        value = _SHARED[key] = make()
    return value


def _server_hello(body: bytes, length: int) -> dict:
    """A ServerHello's fields: version, cipher_suite, hello_retry_request and, for -V,
    ``legacy_version``, ``session_id_length``, ``cipher_suite_value``, ``compression_method``,
    ``extensions``."""
    cursor = _Cursor(body)
    legacy = version = cursor.number(2, "version")
    cursor.take(32, "random")
    session_id = cursor.vector(1, "session id")
    suite = cursor.number(2, "cipher suite")
    compression = cursor.number(1, "compression method")
    extensions = _extensions(cursor)
    for kind, data in extensions:
        if kind == 43 and len(data) == 2:
            version = int.from_bytes(data, "big")
    out = {"version": version_name(version), "cipher_suite": _suite_name(suite)}
    if body[2:34] == _HRR_RANDOM:
        out["hello_retry_request"] = True
    out.update(legacy_version=version_name(legacy), session_id_length=len(session_id), cipher_suite_value=suite,
               compression_method=compression,
               extensions=[_shared_extension(kind, data, False) for kind, data in extensions])
    return out


# IANA "TLS ExtensionType Values", "TLS Supported Groups", "TLS SignatureScheme" and
# "EC Point Formats" registries (the names tshark shows).
EXTENSION_NAMES = {
    0: "server_name", 1: "max_fragment_length", 2: "client_certificate_url", 3: "trusted_ca_keys",
    4: "truncated_hmac", 5: "status_request", 6: "user_mapping", 7: "client_authz", 8: "server_authz",
    9: "cert_type", 10: "supported_groups", 11: "ec_point_formats", 12: "srp", 13: "signature_algorithms",
    14: "use_srtp", 15: "heartbeat", 16: "application_layer_protocol_negotiation", 17: "status_request_v2",
    18: "signed_certificate_timestamp", 19: "client_certificate_type", 20: "server_certificate_type",
    21: "padding", 22: "encrypt_then_mac", 23: "extended_master_secret", 24: "token_binding",
    25: "cached_info", 27: "compress_certificate", 28: "record_size_limit", 35: "session_ticket",
    41: "pre_shared_key", 42: "early_data", 43: "supported_versions", 44: "cookie",
    45: "psk_key_exchange_modes", 47: "certificate_authorities", 48: "oid_filters",
    49: "post_handshake_auth", 50: "signature_algorithms_cert", 51: "key_share",
    57: "quic_transport_parameters", 13172: "next_protocol_negotiation", 17513: "application_settings",
    65037: "encrypted_client_hello", 65281: "renegotiation_info",
}
GROUP_NAMES = {
    1: "sect163k1", 23: "secp256r1", 24: "secp384r1", 25: "secp521r1", 26: "brainpoolP256r1",
    27: "brainpoolP384r1", 28: "brainpoolP512r1", 29: "x25519", 30: "x448", 31: "brainpoolP256r1tls13",
    32: "brainpoolP384r1tls13", 33: "brainpoolP512r1tls13", 256: "ffdhe2048", 257: "ffdhe3072",
    258: "ffdhe4096", 259: "ffdhe6144", 260: "ffdhe8192", 0x6399: "X25519Kyber768Draft00",
    0x11EC: "X25519MLKEM768", 0x11EB: "SecP256r1MLKEM768", 0x0200: "MLKEM512", 0x0201: "MLKEM768",
    0x0202: "MLKEM1024",
}
SIGNATURE_SCHEMES = {
    0x0201: "rsa_pkcs1_sha1", 0x0203: "ecdsa_sha1", 0x0401: "rsa_pkcs1_sha256", 0x0403: "ecdsa_secp256r1_sha256",
    0x0501: "rsa_pkcs1_sha384", 0x0503: "ecdsa_secp384r1_sha384", 0x0601: "rsa_pkcs1_sha512",
    0x0603: "ecdsa_secp521r1_sha512", 0x0804: "rsa_pss_rsae_sha256", 0x0805: "rsa_pss_rsae_sha384",
    0x0806: "rsa_pss_rsae_sha512", 0x0807: "ed25519", 0x0808: "ed448", 0x0809: "rsa_pss_pss_sha256",
    0x080A: "rsa_pss_pss_sha384", 0x080B: "rsa_pss_pss_sha512", 0x081A: "ecdsa_brainpoolP256r1tls13_sha256",
    0x081B: "ecdsa_brainpoolP384r1tls13_sha384", 0x081C: "ecdsa_brainpoolP512r1tls13_sha512",
    0x0301: "SHA224 RSA", 0x0302: "SHA224 DSA", 0x0303: "SHA224 ECDSA", 0x0202: "SHA1 DSA",
    0x0402: "SHA256 DSA", 0x0502: "SHA384 DSA", 0x0602: "SHA512 DSA",
}
POINT_FORMATS = {0: "uncompressed", 1: "ansiX962_compressed_prime", 2: "ansiX962_compressed_char2"}
PSK_MODES = {0: "psk_ke", 1: "psk_dhe_ke"}


def _named(table: dict, value: int) -> str:
    name = table.get(value)
    if name is None:
        name = "Reserved (GREASE)" if _grease(value) else "Unknown"
    return f"{name} (0x{value:04x})"


def _shared_extension(kind: int, data: bytes, client: bool) -> tuple:
    if len(data) > 1024 or kind in (21, 41, 51):  # (padding, pre-shared keys and key shares differ by session)
        return _extension(kind, data, client)
    return _shared((kind, client, data), lambda: _extension(kind, data, client))


def _extension(kind: int, data: bytes, client: bool) -> tuple:
    """(type, name, length, [what it says, one string per item]) of one extension;
    an extension whose inside does not parse says so instead of raising."""
    name = EXTENSION_NAMES.get(kind) or ("Reserved (GREASE)" if _grease(kind) else "Unknown")
    try:
        values = _extension_values(kind, data, client)
    except ValueError as exc:
        values = [f"[cannot read: {exc}]"]
    return kind, name, len(data), values


def _extension_values(kind: int, data: bytes, client: bool) -> List[str]:
    cursor = _Cursor(data)
    if kind == 0:
        names = _Cursor(cursor.vector(2, "server_name list")) if data else None
        out = []
        while names is not None and names.left:
            names.number(1, "name type")
            out.append("Server Name: " + names.vector(2, "server name").decode("ascii", "replace"))
        return out
    if kind == 10:
        return ["Supported Group: " + _named(GROUP_NAMES, g) for g in _u16s(cursor.vector(2, "groups"))]
    if kind == 11:
        return [f"EC point format: {POINT_FORMATS.get(f, 'Unknown')} ({f})" for f in cursor.vector(1, "formats")]
    if kind in (13, 50):
        return ["Signature Algorithm: " + _named(SIGNATURE_SCHEMES, s)
                for s in _u16s(cursor.vector(2, "signature algorithms"))]
    if kind == 43:
        if client:
            return ["Supported Version: " + _version_shown(v) for v in _u16s(cursor.vector(1, "versions"))]
        return ["Supported Version: " + _version_shown(cursor.number(2, "version"))]
    if kind == 51:
        if not client:
            group = cursor.number(2, "group")
            if not cursor.left:  # a HelloRetryRequest names the group only
                return ["Selected Group: " + _named(GROUP_NAMES, group)]
            return [f"Key Share Entry: Group: {_named(GROUP_NAMES, group)}, "
                    f"Key Exchange length: {len(cursor.vector(2, 'key exchange'))}"]
        shares = _Cursor(cursor.vector(2, "client shares"))
        out = []
        while shares.left:
            group = shares.number(2, "group")
            out.append(f"Key Share Entry: Group: {_named(GROUP_NAMES, group)}, "
                       f"Key Exchange length: {len(shares.vector(2, 'key exchange'))}")
        return out
    if kind == 45:
        return [f"PSK Key Exchange Mode: {PSK_MODES.get(m, 'Unknown')} ({m})" for m in cursor.vector(1, "modes")]
    if kind == 16:
        protocols = _Cursor(cursor.vector(2, "protocol list"))
        out = []
        while protocols.left:
            out.append("ALPN Next Protocol: " + protocols.vector(1, "protocol").decode("ascii", "replace"))
        return out
    if kind == 28:
        return [f"Record Size Limit: {cursor.number(2, 'limit')}"]
    if kind == 65281:
        return [f"Renegotiation info extension length: {len(cursor.vector(1, 'renegotiated connection'))}"]
    return []


def _version_shown(value: int) -> str:
    return ("Reserved (GREASE)" if _grease(value) else version_name(value)) + f" (0x{value:04x})"


def _certificates(body: bytes) -> dict:
    """A Certificate message's chain: TLS 1.2 layout, else TLS 1.3 (context + extensions).
    ``certificates`` holds what --sessions shows; ``certificate_fields`` what -V shows
    (``certificate_fields()``, one dict per certificate, leaf first)."""
    chain = _cert_list(body, tls13=False)
    if chain is None:
        chain = _cert_list(body, tls13=True)
    if chain is None:
        raise ValueError("certificate list lengths do not add up")
    return {"certificates": [_certificate(der) for der in chain],
            "certificate_fields": [certificate_fields(der) for der in chain]}


def server_hello_fields(body: bytes) -> dict:
    """What ``details()`` says of a ServerHello, read from its body (handshake header
    stripped), for readers of TLS they put together themselves (analyze --keylog); ValueError
    when it does not parse."""
    return _server_hello(body, len(body))


def certificate_chain(body: bytes) -> Optional[List[dict]]:
    """A Certificate message's certificates (its body: TLS 1.3 layout, else 1.2), leaf first,
    as ``details()``'s ``certificates`` dicts; None when its lengths do not add up. For
    certificates that were not in clear (analyze --keylog decrypts TLS 1.3's)."""
    chain = _cert_list(body, tls13=True)
    if chain is None:
        chain = _cert_list(body, tls13=False)
    return None if chain is None else [_certificate(der) for der in chain]


def _cert_list(body: bytes, tls13: bool):
    pos = 0
    if tls13:
        if not body:
            return None
        pos = 1 + body[0]
    if len(body) < pos + 3:
        return None
    total = int.from_bytes(body[pos:pos + 3], "big")
    pos += 3
    if pos + total != len(body):
        return None
    chain = []
    while pos < len(body):
        if len(body) - pos < 3:
            return None
        size = int.from_bytes(body[pos:pos + 3], "big")
        pos += 3
        if pos + size > len(body):
            return None
        chain.append(body[pos:pos + size])
        pos += size
        if tls13:
            if len(body) - pos < 2:
                return None
            pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    return chain if pos == len(body) else None


def _certificate(der: bytes) -> dict:
    from cryptography import x509
    try:
        cert = x509.load_der_x509_certificate(der)
        not_before, not_after = _validity_text(cert)
        return {"subject": name_text(cert.subject), "issuer": name_text(cert.issuer),
                "not_before": not_before, "not_after": not_after}
    except Exception as exc:
        return {"problem": f"cannot parse certificate: {type(exc).__name__}: {exc}"[:200]}


def name_text(name) -> str:
    """An X.509 name as RFC 4514 text, control characters escaped (a peer's certificate
    is the peer's text: a newline or a terminal escape in it must not reach the screen)."""
    return printable(name.rfc4514_string())


def printable(text: str) -> str:
    """``text`` with each character that is not printable written as its escape (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _validity_text(cert):
    """(not before, not after) as ``2026-11-25T13:37:27Z``."""
    from ..certificates import validity

    return tuple(moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in validity(cert))


_FIELDS_CACHE: Dict[bytes, dict] = {}  # DER -> certificate_fields(): a capture repeats a few certificates
_FIELDS_CACHE_MAX = 1024


def certificate_fields(der: bytes) -> dict:
    """What -V shows of one certificate, read with ``cryptography`` (once per distinct
    certificate): ``length``, ``version``, ``serial`` (hex), ``signature_algorithm``
    (name and OID), ``issuer``, ``subject`` (RFC 4514), ``not_before``, ``not_after``,
    ``public_key`` (e.g. ``"EC secp256r1, 256 bits"``), ``extensions`` (list of strings);
    or ``length`` and ``problem``."""
    fields = _FIELDS_CACHE.get(der)
    if fields is None:
        if len(_FIELDS_CACHE) >= _FIELDS_CACHE_MAX:
            _FIELDS_CACHE.clear()
        fields = _FIELDS_CACHE[der] = _read_certificate(der)
    return fields


def _read_certificate(der: bytes) -> dict:
    from cryptography import x509

    out = {"length": len(der)}
    try:
        cert = x509.load_der_x509_certificate(der)
        oid = cert.signature_algorithm_oid
        not_before, not_after = _validity_text(cert)
        out.update(version=cert.version.name, serial=f"0x{cert.serial_number:x}",
                   signature_algorithm=f"{getattr(oid, '_name', 'unknown')} ({oid.dotted_string})",
                   issuer=name_text(cert.issuer), not_before=not_before,
                   not_after=not_after, subject=name_text(cert.subject),
                   public_key=_public_key(cert))
        out["extensions"] = _certificate_extensions(cert)
    except Exception as exc:  # a certificate the library cannot read is shown as such
        out["problem"] = f"cannot parse certificate: {type(exc).__name__}: {exc}"[:200]
    return out


def _public_key(cert) -> str:
    from ..certificates import key_description

    try:
        return key_description(cert.public_key(), detailed=True)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"


def _certificate_extensions(cert) -> List[str]:
    from cryptography import x509

    out = []
    try:
        extensions = list(cert.extensions)
    except Exception as exc:  # (cryptography refuses some malformed or duplicate extensions)
        return [f"unreadable: {type(exc).__name__}: {exc}"[:200]]
    for ext in extensions:
        value, name = ext.value, getattr(ext.oid, "_name", ext.oid.dotted_string)
        if isinstance(value, x509.BasicConstraints):
            text = f"CA: {value.ca}" + (f", path length {value.path_length}" if value.path_length is not None else "")
        elif isinstance(value, x509.KeyUsage):
            uses = [use for use in ("digital_signature", "content_commitment", "key_encipherment",
                                    "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")
                    if getattr(value, use)]
            if value.key_agreement:
                uses += [use for use in ("encipher_only", "decipher_only") if getattr(value, use)]
            text = ", ".join(uses)
        elif isinstance(value, x509.ExtendedKeyUsage):
            text = ", ".join(getattr(usage, "_name", usage.dotted_string) for usage in value)
        elif isinstance(value, x509.SubjectAlternativeName):
            text = ", ".join(f"{type(general).__name__.replace('Name', '')}: {general.value}" for general in value)
        elif isinstance(value, (x509.SubjectKeyIdentifier,)):
            text = value.digest.hex()
        elif isinstance(value, x509.AuthorityKeyIdentifier) and value.key_identifier:
            text = value.key_identifier.hex()
        else:
            text = ""
        out.append(f"{name}{' (critical)' if ext.critical else ''}" + (f": {text}" if text else ""))
    return out
