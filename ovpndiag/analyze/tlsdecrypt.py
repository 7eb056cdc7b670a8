"""Decrypt the TLS of one OpenVPN control channel with the secrets of an NSS key log.

Input: for each direction ("client", "server") the TLS byte stream of one session's
key id 0 as ``[(frame, bytes), ...]`` in message packet-id order, retransmissions
dropped. ``decrypt(client_chunks, server_chunks, keylog) -> Decryption``.

How (RFC 8446 for TLS 1.3, RFC 5246/5288/7905 for TLS 1.2):

* The ClientHello's random finds the session's secrets in the key log; the ServerHello
  (read by ``dissect.tls``) gives the version and the cipher suite.
* TLS 1.3: key and IV of each direction come from its traffic secret by HKDF-Expand-Label
  ("key", "iv"); the nonce of a record is the IV XOR its sequence number; the additional
  data is the record header; the plaintext ends with its real content type and zero
  padding. A side encrypts with its handshake secret until its Finished, then with its
  application secret (sequence numbers start again at 0); a KeyUpdate moves to the next
  application secret. The dummy ChangeCipherSpec is ignored.
* TLS 1.2: the master secret (``CLIENT_RANDOM``) is expanded by the suite's PRF into
  both sides' keys and IVs; a side encrypts everything after its ChangeCipherSpec.
  AES-GCM records carry an 8-byte explicit nonce after the 4-byte implicit salt;
  CHACHA20-POLY1305's nonce is the IV XOR the sequence number; the additional data is
  the sequence number and the header with the plaintext's length. CBC suites are not
  decrypted (said so, by name), nor are other suites.

What comes out is each side's content in order: handshake messages (reassembled across
records), alerts and application data, each with the frame that completed it and
whether it was encrypted; and the problems that stopped decryption (no secrets for this
client random, a suite not decrypted here, a record failing its authentication tag -
the key log belongs to another session). A side's decryption stops at its first
problem; nothing undecrypted is ever passed on as content.

Secrets and keys stay inside this module's functions (never in the result).
``cryptography`` is imported on the first record that needs it.
"""

import hmac
from bisect import bisect_left
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..dissect.tls import server_hello_fields
from .keylog import KeyLog

HANDSHAKE, ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC = 22, 21, 23, 20
CLIENT_HELLO, SERVER_HELLO, FINISHED, KEY_UPDATE = 1, 2, 20, 24
_MAX_RECORD = 2 ** 14 + 2048
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# TLS 1.3 suites: (AEAD, key length, hash, tag length)
_TLS13_SUITES = {0x1301: ("AES-GCM", 16, "sha256", 16), 0x1302: ("AES-GCM", 32, "sha384", 16),
                 0x1303: ("CHACHA20-POLY1305", 32, "sha256", 16), 0x1304: ("AES-CCM", 16, "sha256", 16),
                 0x1305: ("AES-CCM", 16, "sha256", 8)}


class Plain(NamedTuple):
    """One piece of a side's TLS content: a whole handshake message (header included),
    an alert record's bytes, or an application-data record's plaintext."""
    frame: int
    sender: str
    content_type: int
    data: bytes
    encrypted: bool


class Problem(NamedTuple):
    frame: int
    sender: str
    text: str


class Decryption(NamedTuple):
    version: Optional[str]       # "TLS 1.3", from the ServerHello
    suite: Optional[str]         # IANA name of the suite chosen
    content: List[Plain]         # each side in order; both sides merged by frame
    problems: List[Problem]      # why some records stay encrypted
    decrypted: int               # how many records were decrypted


class _Stream:
    """One side's records, each with the frame that completed it."""

    def __init__(self, sender: str, chunks):
        self.sender = sender
        self.records: List[Tuple[int, int, bytes, bytes]] = []  # (frame, type, header, fragment)
        self.problem: Optional[Problem] = None
        data = b"".join(chunk for _frame, chunk in chunks)
        ends, frames, total = [], [], 0
        for frame, chunk in chunks:
            if chunk:
                total += len(chunk)
                ends.append(total)
                frames.append(frame)
        pos = 0
        while pos + 5 <= len(data):
            kind, length = data[pos], int.from_bytes(data[pos + 3:pos + 5], "big")
            if not 20 <= kind <= 24 or data[pos + 1] != 3 or length > _MAX_RECORD:
                frame = frames[bisect_left(ends, pos + 1)]
                self.problem = Problem(frame, sender, f"not TLS after {pos} bytes of the {sender}'s stream")
                break
            end = pos + 5 + length
            if end > len(data):
                break  # the capture ends inside this record
            self.records.append((frames[bisect_left(ends, end)], kind, data[pos:pos + 5], data[pos + 5:end]))
            pos = end


class _Messages:
    """Handshake messages out of handshake content, which may split or join them."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data: bytes) -> List[bytes]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 4:
            size = 4 + int.from_bytes(self.buffer[1:4], "big")
            if len(self.buffer) < size:
                break
            out.append(self.buffer[:size])
            self.buffer = self.buffer[size:]
        return out


def decrypt(client_chunks, server_chunks, keylog: KeyLog) -> Decryption:
    streams = {"client": _Stream("client", client_chunks), "server": _Stream("server", server_chunks)}
    problems = [s.problem for s in streams.values() if s.problem]
    client_random, hello = _hellos(streams)
    version = suite = None
    schedule = None
    if hello is not None:
        version, suite = hello["version"], hello["cipher_suite"]
        schedule, why = _schedule(hello, client_random, keylog)
    else:
        why = "no ServerHello in the capture: version and cipher suite unknown"
    content, count = [], 0
    for stream in streams.values():
        side = _Side(stream.sender, version, schedule)
        for frame, kind, header, fragment in stream.records:
            if side.problem is None:
                side.record(frame, kind, header, fragment)
        if side.encrypted_left and side.problem is None:
            side.problem = Problem(side.first_encrypted, stream.sender,
                                   f"{side.encrypted_left} encrypted {stream.sender} records not decrypted: "
                                   + (why or "application data before any keys were agreed"))
        if side.problem is not None:
            problems.append(side.problem)
        content.extend(side.content)
        count += side.decrypted
    content.sort(key=lambda plain: plain.frame)
    return Decryption(version, suite, content, problems, count)


def _hellos(streams) -> Tuple[Optional[bytes], Optional[dict]]:
    """The ClientHello's random and the (last, not retry-request) ServerHello's fields."""
    client_random = hello = None
    for name, want in (("client", CLIENT_HELLO), ("server", SERVER_HELLO)):
        messages = _Messages()
        for _frame, kind, _header, fragment in streams[name].records:
            if kind == APPLICATION_DATA:
                break
            if kind != HANDSHAKE:
                continue
            for message in messages.feed(fragment):
                if message[0] != want or len(message) < 4 + 34:
                    continue
                body = message[4:]
                if want == CLIENT_HELLO and client_random is None:
                    client_random = body[2:34]
                elif want == SERVER_HELLO and body[2:34] != _HRR_RANDOM:
                    try:
                        hello = dict(server_hello_fields(body), server_random=body[2:34])
                    except ValueError:
                        continue
            if hello is not None and name == "server":
                break
    return client_random, hello


# --------------------------------------------------------------------------- keys

class _Schedule(NamedTuple):
    tls13: bool
    aead: str
    key_length: int
    iv_length: int
    tag_length: int
    hash: str
    secrets: Dict[str, bytes]      # TLS 1.3: label -> traffic secret; TLS 1.2: sender -> (key + iv)


def _schedule(hello, client_random, keylog) -> Tuple[Optional[_Schedule], str]:
    """The keys' recipe for this session, or None and why not."""
    value = hello["cipher_suite_value"]
    name = hello["cipher_suite"]
    if client_random is None:
        return None, "no ClientHello in the capture: its random finds the secrets"
    secrets = keylog.secrets(client_random)
    if hello["version"] == "TLS 1.3":
        if value not in _TLS13_SUITES:
            return None, f"TLS 1.3 suite {name} is not one this reads"
        aead, key_length, digest, tag = _TLS13_SUITES[value]
        wanted = [label for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET")
                  if label not in secrets]
        if wanted:
            return None, ("no secrets for this session's client random in the key log" if not secrets else
                          f"the key log lacks {', '.join(wanted)} for this session")
        return _Schedule(True, aead, key_length, 12, tag, digest, dict(secrets)), ""
    if hello["version"] != "TLS 1.2":
        return None, f"{hello['version']} (only TLS 1.2 and 1.3 are read)"
    suite = _tls12_suite(name)
    if isinstance(suite, str):
        return None, suite
    master = secrets.get("CLIENT_RANDOM")
    if master is None:
        return None, "no secrets for this session's client random in the key log"
    aead, key_length, iv_length, digest = suite
    block = _prf(digest, master, b"key expansion", hello["server_random"] + client_random,
                 2 * (key_length + iv_length))
    keys = {"client": block[:key_length], "server": block[key_length:2 * key_length]}
    ivs = block[2 * key_length:]
    keys = {"client": keys["client"] + ivs[:iv_length], "server": keys["server"] + ivs[iv_length:]}
    return _Schedule(False, aead, key_length, iv_length, 16, digest, keys), ""


def _tls12_suite(name: str):
    """(AEAD, key length, fixed IV length, PRF hash) of a TLS 1.2 suite, or why not."""
    cipher = name.partition("_WITH_")[2]
    digest = "sha384" if name.endswith("_SHA384") else "sha256"
    if "_CBC_" in name or cipher.endswith("_CBC"):
        return f"CBC suite {name} (only AEAD suites are read)"
    if cipher.startswith("AES_128_GCM_"):
        return "AES-GCM", 16, 4, digest
    if cipher.startswith("AES_256_GCM_"):
        return "AES-GCM", 32, 4, digest
    if cipher.startswith("CHACHA20_POLY1305_"):
        return "CHACHA20-POLY1305", 32, 12, digest
    return f"suite {name} is not one this reads (AES-GCM and CHACHA20-POLY1305 are)"


def _prf(digest: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.2's PRF (RFC 5246 5): P_hash(secret, label + seed)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + seed, digest)
    return out[:length]


def _expand_label(digest: str, secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 7.1)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes([counter]), digest)
        out += block
        counter += 1
    return out[:length]


def _aead(kind: str, key: bytes, tag_length: int):
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

    if kind == "AES-GCM":
        return AESGCM(key)
    if kind == "AES-CCM":
        return AESCCM(key, tag_length)
    return ChaCha20Poly1305(key)


# --------------------------------------------------------------------------- one side

class _Side:
    """Walks one side's records: clear ones as they are, encrypted ones decrypted with
    the side's current keys."""

    def __init__(self, sender: str, version: Optional[str], schedule: Optional[_Schedule]):
        self.sender, self.schedule = sender, schedule
        self.tls13 = version == "TLS 1.3"
        self.content: List[Plain] = []
        self.problem: Optional[Problem] = None
        self.messages = _Messages()
        self.cipher = None
        self.iv = b""
        self.seq = 0
        self.encrypting = False         # TLS 1.2: after this side's ChangeCipherSpec
        self.secret: Optional[bytes] = None
        self.encrypted_left = 0
        self.first_encrypted = 0
        self.decrypted = 0
        if self.tls13 and schedule is not None:
            self._use13(schedule.secrets.get(f"{sender.upper()}_HANDSHAKE_TRAFFIC_SECRET"))

    def record(self, frame: int, kind: int, header: bytes, fragment: bytes) -> None:
        # (application data is never in clear; TLS 1.3's ChangeCipherSpec is a dummy)
        encrypted = kind == APPLICATION_DATA or self.encrypting
        if not encrypted:
            if kind == CHANGE_CIPHER_SPEC:
                if not self.tls13:
                    self.encrypting = True
                    self._use12()
                return
            self._content(frame, kind, fragment, False)
            return
        if self.cipher is None:
            if not self.encrypted_left:
                self.first_encrypted = frame
            self.encrypted_left += 1
            return
        plain = self._open(frame, header, fragment)
        if plain is None:
            return
        if self.tls13:
            end = len(plain.rstrip(b"\x00"))
            if not end:
                self.problem = Problem(frame, self.sender, "a TLS 1.3 record with no content type")
                return
            kind, plain = plain[end - 1], plain[:end - 1]
        self.decrypted += 1
        self._content(frame, kind, plain, True)

    def _content(self, frame: int, kind: int, data: bytes, encrypted: bool) -> None:
        if kind != HANDSHAKE:
            self.content.append(Plain(frame, self.sender, kind, data, encrypted))
            return
        for message in self.messages.feed(data):
            self.content.append(Plain(frame, self.sender, HANDSHAKE, message, encrypted))
            if encrypted and self.tls13 and message[0] == FINISHED and self.secret is not None:
                self._next13(f"{self.sender.upper()}_TRAFFIC_SECRET_0", frame)
            elif encrypted and self.tls13 and message[0] == KEY_UPDATE and self.cipher is not None:
                self._use13(_expand_label(self.schedule.hash, self.secret, b"traffic upd",
                                          len(self.secret)))

    def _next13(self, label: str, frame: int) -> None:
        secret = self.schedule.secrets.get(label)
        self._use13(secret)
        if secret is None:
            self.problem = Problem(frame, self.sender, f"the key log lacks {label} for this session: "
                                                       f"the {self.sender}'s records after its Finished stay encrypted")

    def _use13(self, secret: Optional[bytes]) -> None:
        self.secret, self.seq, self.cipher = secret, 0, None
        if secret is not None:
            s = self.schedule
            self.cipher = _aead(s.aead, _expand_label(s.hash, secret, b"key", s.key_length), s.tag_length)
            self.iv = _expand_label(s.hash, secret, b"iv", s.iv_length)

    def _use12(self) -> None:
        self.seq = 0
        s = self.schedule
        if s is not None and not s.tls13:
            material = s.secrets[self.sender]
            self.cipher = _aead(s.aead, material[:s.key_length], s.tag_length)
            self.iv = material[s.key_length:]

    def _open(self, frame: int, header: bytes, fragment: bytes) -> Optional[bytes]:
        from cryptography.exceptions import InvalidTag

        s, seq = self.schedule, self.seq
        self.seq += 1
        if s.tls13:
            nonce, aad, body = self._xor_nonce(seq), header, fragment
        elif s.aead == "AES-GCM":
            nonce, body = self.iv + fragment[:8], fragment[8:]
            aad = seq.to_bytes(8, "big") + header[:3] + max(len(body) - 16, 0).to_bytes(2, "big")
        else:
            nonce, body = self._xor_nonce(seq), fragment
            aad = seq.to_bytes(8, "big") + header[:3] + max(len(body) - 16, 0).to_bytes(2, "big")
        try:
            return self.cipher.decrypt(nonce, body, aad)
        except (InvalidTag, ValueError):
            self.problem = Problem(frame, self.sender, f"a {self.sender} record fails its authentication tag: "
                                                       "the key log's secrets are not this session's")
            return None

    def _xor_nonce(self, seq: int) -> bytes:
        return (int.from_bytes(self.iv, "big") ^ seq).to_bytes(len(self.iv), "big")
