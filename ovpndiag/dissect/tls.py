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
  only an incomplete record is buffered (at most one record, 18 KiB), at most
  ``max_held_packets`` / ``max_held_bytes`` wait behind a gap, and only the few
  handshake messages ``details()`` reads are kept (capped, see ``KEEP_*``).
  A stream that cannot be followed (bytes that are not TLS, a record longer than TLS
  allows, a gap that never fills) is marked ``broken`` with the reason, and names
  nothing more.
* ``details()`` is computed on request only (``-V``, ``--sessions``): one dict per
  completed record / handshake message, in stream order, parsed with Scapy's TLS
  layers (imported there, never at module import) and ``cryptography.x509``.

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

__all__ = ["TLSStream", "tls_names", "HANDSHAKE_NAMES", "ALERT_DESCRIPTIONS"]

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
        # details=False (a plain listing): names only, nothing kept for details(), which
        # then returns [] (every completed message counts as omitted).
        self._keep_entries = KEEP_ENTRIES if details else 0
        self._kept_types = _KEPT_TYPES if details else ()
        self._marking = details  # packet-ids of buffered bytes: only kept items name them

    # ------------------------------------------------------------------ fast path

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def pending(self) -> int:
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
        self._marks = _NO_MARKS
        self._hs_body = None
        for pid in self._held:
            self._held[pid] = b""
        self._held_bytes = 0

    def _feed(self, pid: int, payload: bytes, frame: int, names: List[str]) -> None:
        if self.broken or not payload:
            return
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
        the module docstring). Parses with Scapy's TLS layers; never raises."""
        out = []
        for (frame, name, content_type, version, handshake_type, length, first_pid, last_pid,
             encrypted, body, problem) in self._items:
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
            out.append(entry)
        return out


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
    from scapy.layers.tls.crypto.suites import _tls_cipher_suites
    return _tls_cipher_suites.get(value, f"0x{value:04x}")


def _client_hello(body: bytes, length: int) -> dict:
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.extensions import TLS_Ext_ServerName, TLS_Ext_SupportedVersion_CH

    hello = TLSClientHello(b"\x01" + length.to_bytes(3, "big") + body)
    _check_parsed(hello)
    client_version = hello.version
    out = {"client_version": version_name(client_version)}
    offered = None
    sni = None
    for ext in hello.ext or []:
        if isinstance(ext, TLS_Ext_SupportedVersion_CH):
            offered = [version_name(v) for v in ext.versions or [] if (v & 0x0F0F) != 0x0A0A]
        elif isinstance(ext, TLS_Ext_ServerName):
            for server_name in ext.servernames or []:
                if getattr(server_name, "nametype", 0) == 0 and server_name.servername:
                    sni = server_name.servername.decode("ascii", "replace")
                    break
    out["versions_offered"] = offered if offered is not None else [version_name(client_version)]
    out["cipher_suites"] = [_suite_name(s) for s in hello.ciphers or [] if (s & 0x0F0F) != 0x0A0A]
    if sni is not None:
        out["sni"] = sni
    return out


def _server_hello(body: bytes, length: int) -> dict:
    from scapy.layers.tls.handshake import TLSServerHello
    from scapy.layers.tls.extensions import TLS_Ext_SupportedVersion_SH

    hello = TLSServerHello(b"\x02" + length.to_bytes(3, "big") + body)
    _check_parsed(hello)
    version = hello.version
    for ext in getattr(hello, "ext", None) or []:
        if isinstance(ext, TLS_Ext_SupportedVersion_SH):
            version = ext.version
    out = {"version": version_name(version), "cipher_suite": _suite_name(hello.cipher)}
    if body[2:34] == _HRR_RANDOM:
        out["hello_retry_request"] = True
    return out


def _check_parsed(packet) -> None:
    """Scapy leaves what it could not read as Raw / Padding: report that as a problem."""
    from scapy.packet import Padding, Raw
    if packet.haslayer(Raw) or packet.haslayer(Padding):
        raise ValueError("trailing bytes Scapy's TLS layer could not read")


def _certificates(body: bytes) -> dict:
    """A Certificate message's chain: TLS 1.2 layout, else TLS 1.3 (context + extensions)."""
    chain = _cert_list(body, tls13=False)
    if chain is None:
        chain = _cert_list(body, tls13=True)
    if chain is None:
        raise ValueError("certificate list lengths do not add up")
    return {"certificates": [_certificate(der) for der in chain]}


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
        return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                "not_before": _utc(cert, "not_valid_before"),
                "not_after": _utc(cert, "not_valid_after")}
    except Exception as exc:
        return {"problem": f"cannot parse certificate: {type(exc).__name__}: {exc}"[:200]}


def _utc(cert, attribute: str) -> str:
    value = getattr(cert, attribute + "_utc", None)  # cryptography >= 42
    if value is None:
        value = getattr(cert, attribute)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
