"""Control-channel wrapping: tls-auth HMACs, tls-crypt, tls-crypt-v2.

Every wrapper works on bytes and is seen from one peer: ``wrap`` protects a
packet that peer sends, ``unwrap`` checks and opens a packet it receives from
the other side, and ``peer()`` is the same key seen from the other side (so a
capture reader checks client packets with ``client_wrapper.peer()``).

A "plain" packet is the unwrapped layout: ``op | session id | ACKs | [remote
session id] | [message packet-id] | payload``. ``unwrap`` raises ``WrapError``
(and nothing else) on any input it cannot open; ``verify`` only answers.
"""

import hashlib
import hmac
import struct
from typing import NamedTuple, Optional

from . import wirelayout
from .keys import StaticKey, TLSCryptV2ClientKey, TLSCryptV2ServerKey
from .protocol import CARRIES_WKC, HMAC_SIZES, PLAIN, MalformedPacket, Wrapping, digest_name, wkc_length

CLIENT, SERVER = "client", "server"
_REPLAY = struct.Struct("!II")  # replay packet-id, net_time: what the HMAC or tag covers first

_DIGESTS = {name: name.lower() for name in HMAC_SIZES}


class WrapError(ValueError):
    """A packet that cannot be opened: too short, bad HMAC or tag, bad WKc."""


class Unwrapped(NamedTuple):
    """An opened packet. Opcodes 10 and 11 exist only wrapped, so dissect those
    from ``decrypted`` (with ``Wrapping(kind, decrypted=True)``), not ``plain``."""

    plain: bytes  # the packet as it would be without wrapping (and without a WKc)
    replay_packet_id: Optional[int] = None
    net_time: Optional[int] = None
    decrypted: Optional[bytes] = None  # tls-crypt: the wire bytes, plaintext in place of ciphertext
    wkc: bytes = b""


class _Wrapper:
    def verify(self, wrapped) -> bool:
        """Whether ``unwrap`` would accept the packet; never raises."""
        try:
            self.unwrap(wrapped)
            return True
        except WrapError:
            return False


class NoWrapping(_Wrapper):
    """The identity wrapper, so callers need not special-case plain sessions."""

    wrapping = Wrapping()

    def wrap(self, plain, replay_packet_id=None, net_time=None):
        return bytes(plain)

    def unwrap(self, wrapped):
        return Unwrapped(bytes(wrapped))

    def peer(self):
        return self

    def __repr__(self):
        return "NoWrapping()"


class TLSAuth(_Wrapper):
    """tls-auth as the peer using ``direction`` (0, 1 or None: bidirectional).

    Direction 0 sends with the HMAC key of key 0 (bytes 64..) and checks with
    key 1 (bytes 192..); direction 1 the other way round; None uses key 0 both ways.
    """

    def __init__(self, key: StaticKey, direction: Optional[int] = None, digest: str = "SHA1"):
        digest = digest_name(digest)  # (ValueError for an unknown one)
        if direction not in (0, 1, None):
            raise ValueError(f"key direction must be 0, 1 or None, not {direction!r}")
        self.key, self.direction, self.digest = key, direction, digest
        self.hmac_size = HMAC_SIZES[digest]
        send, receive = {None: (0, 0), 0: (0, 1), 1: (1, 0)}[direction]
        self.send_index, self.receive_index = send, receive  # which of the two keys' HMAC slots
        self._send_key = key.hmac(send)[:self.hmac_size]
        self._receive_key = key.hmac(receive)[:self.hmac_size]
        self.wrapping = Wrapping.tls_auth(self.hmac_size)
        self._layout = _Spans(self.wrapping)

    def peer(self):
        return TLSAuth(self.key, None if self.direction is None else 1 - self.direction, self.digest)

    def _hmac(self, key, replay, plain):
        # covered: replay packet-id | net_time | op | session id | rest of the plain packet
        return hmac.new(key, replay + plain, _DIGESTS[self.digest]).digest()

    def wrap(self, plain, replay_packet_id, net_time):
        plain = bytes(plain)
        spans = self._layout
        if len(plain) < spans.plain_header:
            raise WrapError(f"{len(plain)} bytes is too short to be a control packet")
        replay = _REPLAY.pack(replay_packet_id, net_time)
        return spans.header(plain, hmac=self._hmac(self._send_key, replay, plain), replay=replay) + \
            plain[spans.plain_header:]

    def unwrap(self, wrapped):
        wrapped = bytes(wrapped)
        spans = self._layout
        if len(wrapped) < spans.end:
            raise WrapError(f"{len(wrapped)} bytes is too short for a {self.digest} tls-auth packet "
                            f"(at least {spans.end})")
        mac, replay = wrapped[spans.hmac], wrapped[spans.replay]
        plain = wirelayout.plain(wrapped, self.wrapping)
        if not hmac.compare_digest(mac, self._hmac(self._receive_key, replay, plain)):
            raise WrapError("HMAC does not match")
        replay_packet_id, net_time = _REPLAY.unpack(replay)
        return Unwrapped(plain, replay_packet_id, net_time)

    def __repr__(self):
        direction = "bidirectional" if self.direction is None else f"key-direction {self.direction}"
        return f"TLSAuth({self.key.source}, {direction}, {self.digest})"


def _aes256_ctr(key, iv, data):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    cipher = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


class TLSCrypt(_Wrapper):
    """tls-crypt as ``role`` ("client" or "server"); no key direction is involved.

    The client sends with key 1 (cipher bytes 128..159, HMAC bytes 192..223), the
    server with key 0 (bytes 0..31, 64..95). Tag = HMAC-SHA256 over the 17-byte
    header and the plaintext; AES-256-CTR with the tag's first 16 bytes as counter.
    """

    def __init__(self, key: StaticKey, role: str = CLIENT):
        if role not in (CLIENT, SERVER):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        self.key, self.role = key, role
        send, receive = (1, 0) if role == CLIENT else (0, 1)
        self._send = (key.cipher(send)[:32], key.hmac(send)[:32])
        self._receive = (key.cipher(receive)[:32], key.hmac(receive)[:32])
        self.wrapping = Wrapping("tls-crypt")
        self._layout = _Spans(self.wrapping)

    def peer(self):
        return TLSCrypt(self.key, SERVER if self.role == CLIENT else CLIENT)

    def wrap(self, plain, replay_packet_id, net_time, wkc=b""):
        plain = bytes(plain)
        spans = self._layout
        if len(plain) < spans.plain_header:
            raise WrapError(f"{len(plain)} bytes is too short to be a control packet")
        encrypt_key, auth_key = self._send
        replay, plaintext = _REPLAY.pack(replay_packet_id, net_time), plain[spans.plain_header:]
        # The tag covers the header before it (op, session id, replay packet-id, time) and the plaintext.
        covered = spans.header(plain, replay=replay)[:spans.tag.start]
        tag = hmac.new(auth_key, covered + plaintext, hashlib.sha256).digest()
        return spans.header(plain, replay=replay, tag=tag) + _aes256_ctr(encrypt_key, tag[:16], plaintext) + wkc

    def unwrap(self, wrapped, wkc_size=None):
        """Open a packet from the peer; ``wkc_size`` bytes at the end are its WKc
        (by default read from the last two bytes of opcodes 10 and 11)."""
        wrapped = bytes(wrapped)
        spans = self._layout
        start = spans.end
        if len(wrapped) < start:
            raise WrapError(f"{len(wrapped)} bytes is too short for a tls-crypt packet (at least {start})")
        if wkc_size is None:
            wkc_size = _wkc_size(wrapped, start)
        body_end = len(wrapped) - wkc_size
        encrypt_key, auth_key = self._receive
        tag = wrapped[spans.tag]
        plaintext = _aes256_ctr(encrypt_key, tag[:16], wrapped[start:body_end])
        expected = hmac.new(auth_key, wrapped[:spans.tag.start] + plaintext, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise WrapError("tls-crypt tag does not match (wrong key, or packet altered)")
        replay_packet_id, net_time = _REPLAY.unpack(wrapped[spans.replay])
        decrypted = wrapped[:start] + plaintext + wrapped[body_end:]
        return Unwrapped(plain=wirelayout.plain(decrypted, self.wrapping, wkc_size),
                         replay_packet_id=replay_packet_id, net_time=net_time, decrypted=decrypted,
                         wkc=wrapped[body_end:])

    def __repr__(self):
        return f"TLSCrypt({self.key.source}, {self.role})"


def _wkc_size(wrapped, start):
    if wrapped[0] >> 3 not in CARRIES_WKC:
        return 0
    try:
        return wkc_length(wrapped, start)
    except MalformedPacket as error:
        raise WrapError(str(error)) from None


class _Spans:
    """Where a wrapping's fields sit (from wirelayout, i.e. from the layers), as slices;
    ``header()`` puts a plain packet's op and session id and the given fields in place."""

    def __init__(self, wrapping):
        layout = wirelayout.control_layout(wrapping)
        self.plain_header = wirelayout.control_layout(PLAIN).header  # op | session id
        self.end = layout.header
        spans = {name: slice(offset, offset + size) for name, (offset, size) in layout.fields.items()}
        self.hmac, self.tag = spans.get("hmac"), spans.get("tag")
        # replay packet-id and net time, next to each other: covered (and packed) as one
        self.replay = slice(spans["replay_packet_id"].start, spans["net_time"].stop)
        assert self.replay.stop - self.replay.start == _REPLAY.size

    def header(self, plain, **fields):
        header = bytearray(self.end)
        header[:self.plain_header] = plain[:self.plain_header]
        for name, value in fields.items():
            header[getattr(self, name)] = value
        return bytes(header)


class TLSCryptV2Client(TLSCrypt):
    """tls-crypt-v2 as a client: tls-crypt with Kc, the WKc appended to opcodes 10 and 11."""

    def __init__(self, client_key: TLSCryptV2ClientKey):
        super().__init__(client_key.kc, CLIENT)
        self.client_key = client_key
        self.wrapping = Wrapping("tls-crypt-v2")

    def wrap(self, plain, replay_packet_id, net_time, wkc=None):
        if wkc is None:
            wkc = self.client_key.wkc if plain[:1] and plain[0] >> 3 in CARRIES_WKC else b""
        return super().wrap(plain, replay_packet_id, net_time, wkc)

    def peer(self):
        return TLSCrypt(self.key, SERVER)

    def __repr__(self):
        return f"TLSCryptV2Client({self.client_key.source})"


class ClientKeyInfo(NamedTuple):
    """What a server learns from a WKc."""

    kc: StaticKey
    metadata_type: Optional[int]  # 0 user-defined, 1 timestamp
    metadata: bytes  # after the type byte
    timestamp: Optional[int]  # creation time (Unix seconds) for type 1


class TLSCryptV2Server(_Wrapper):
    """tls-crypt-v2 as the server: unwraps WKcs, then opens the client's packets."""

    def __init__(self, server_key: TLSCryptV2ServerKey):
        self.server_key = server_key
        self.wrapping = Wrapping("tls-crypt-v2")

    def unwrap_client_key(self, wkc) -> ClientKeyInfo:
        """Check and decrypt a WKc: ``tag(32) | AES-256-CTR(Kc | metadata) | length(2)``."""
        wkc = bytes(wkc)
        if len(wkc) < 32 + 256 + 2:
            raise WrapError(f"WKc of {len(wkc)} bytes is too short to hold a client key")
        if struct.unpack("!H", wkc[-2:])[0] != len(wkc):
            raise WrapError("WKc length field does not match its size")
        tag, ciphertext = wkc[:32], wkc[32:-2]
        content = _aes256_ctr(self.server_key.encrypt_key, tag[:16], ciphertext)
        expected = hmac.new(self.server_key.auth_key, wkc[-2:] + content, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, expected):
            raise WrapError("WKc tag does not match (wrong tls-crypt-v2 server key?)")
        metadata = content[256:]
        metadata_type = metadata[0] if metadata else None
        timestamp = None
        if metadata_type == 1 and len(metadata) >= 9:
            timestamp = struct.unpack("!Q", metadata[1:9])[0]
        return ClientKeyInfo(StaticKey(content[:256], f"WKc unwrapped with {self.server_key.source}"),
                             metadata_type, metadata[1:], timestamp)

    def wrap_client_key(self, kc: StaticKey, metadata: bytes) -> bytes:
        """Make a WKc, as ``openvpn --genkey tls-crypt-v2-client`` does (metadata
        includes its type byte)."""
        length = struct.pack("!H", 32 + 256 + len(metadata) + 2)
        content = kc.cipher(0) + kc.hmac(0) + kc.cipher(1) + kc.hmac(1) + metadata
        tag = hmac.new(self.server_key.auth_key, length + content, hashlib.sha256).digest()
        return tag + _aes256_ctr(self.server_key.encrypt_key, tag[:16], content) + length

    def for_client(self, wkc) -> TLSCrypt:
        """The server's side of one client's session, keyed by its WKc."""
        return TLSCrypt(self.unwrap_client_key(wkc).kc, SERVER)

    def unwrap(self, wrapped):
        """Open a client packet that carries its WKc (opcodes 10 and 11)."""
        wrapped = bytes(wrapped)
        if not wrapped or wrapped[0] >> 3 not in CARRIES_WKC:
            raise WrapError("only P_CONTROL_HARD_RESET_CLIENT_V3 and P_CONTROL_WKC_V1 carry the "
                            "client key; other packets need the session's key (for_client)")
        wkc_size = _wkc_size(wrapped, wirelayout.control_layout(self.wrapping).header)
        return self.for_client(wrapped[len(wrapped) - wkc_size:]).unwrap(wrapped, wkc_size)

    def __repr__(self):
        return f"TLSCryptV2Server({self.server_key.source})"
