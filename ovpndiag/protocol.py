"""OpenVPN's wire constants and the Wrapping descriptor, without Scapy.

The Scapy layers (``layers``) are the definition of the packet layout; these
are the facts they share with code that must not pay for importing Scapy (the
fast capture path, the key wrapping, the monitoring check's settings).
"""

from enum import IntEnum
from typing import NamedTuple


class Opcode(IntEnum):
    """The top 5 bits of a packet's first byte (``opcode << 3 | key_id``)."""

    P_CONTROL_HARD_RESET_CLIENT_V1 = 1  # obsolete, rejected by 2.x
    P_CONTROL_HARD_RESET_SERVER_V1 = 2  # obsolete
    P_CONTROL_SOFT_RESET_V1 = 3  # renegotiation
    P_CONTROL_V1 = 4  # TLS bytes
    P_ACK_V1 = 5
    P_DATA_V1 = 6
    P_CONTROL_HARD_RESET_CLIENT_V2 = 7
    P_CONTROL_HARD_RESET_SERVER_V2 = 8
    P_DATA_V2 = 9  # a 3-byte peer-id follows
    P_CONTROL_HARD_RESET_CLIENT_V3 = 10  # tls-crypt-v2
    P_CONTROL_WKC_V1 = 11  # control + wrapped client key


OPCODES = {opcode.value: opcode.name for opcode in Opcode}
# Groups of opcodes, as plain ints: the hot paths test bytes against them.
CLIENT_RESETS = tuple(map(int, (Opcode.P_CONTROL_HARD_RESET_CLIENT_V1, Opcode.P_CONTROL_HARD_RESET_CLIENT_V2,
                                Opcode.P_CONTROL_HARD_RESET_CLIENT_V3)))
SERVER_RESETS = tuple(map(int, (Opcode.P_CONTROL_HARD_RESET_SERVER_V1, Opcode.P_CONTROL_HARD_RESET_SERVER_V2)))
RESETS = CLIENT_RESETS + SERVER_RESETS
CARRIES_WKC = tuple(map(int, (Opcode.P_CONTROL_HARD_RESET_CLIENT_V3, Opcode.P_CONTROL_WKC_V1)))  # a WKc is appended
DATA_OPCODES = tuple(map(int, (Opcode.P_DATA_V1, Opcode.P_DATA_V2)))
CONTROL_OPCODES = frozenset(map(int, Opcode)).difference(DATA_OPCODES)
KEY_ID_BITS = 3


def first_byte(opcode: int, key_id: int = 0) -> int:
    """A packet's first byte: ``opcode << 3 | key_id``."""
    return opcode << KEY_ID_BITS | key_id


# tls-auth HMAC size by --auth digest; nothing on the wire says which one.
HMAC_SIZES = {"MD5": 16, "SHA1": 20, "SHA224": 28, "SHA256": 32, "SHA384": 48, "SHA512": 64}


def digest_name(text: str) -> str:
    """The HMAC_SIZES name of an ``--auth`` digest as people write it (``sha256``,
    ``SHA-256``); raises ValueError, naming the known ones, for any other."""
    name = text.strip().upper().replace("-", "")
    if name not in HMAC_SIZES:
        raise ValueError(f"unknown --auth digest '{text}' (use one of {', '.join(HMAC_SIZES)})")
    return name

TLS_CRYPT_TAG_SIZE = 32
MAX_ACKS = 8  # OpenVPN rejects a longer ACK array (reliable.h, RELIABLE_ACK_SIZE)
EARLY_NEG_START = 0x0F000000  # tls-crypt-v2 client's first replay packet-id, minus one
SESSION_ID_SIZE = 8
MIN_PACKET = 1 + SESSION_ID_SIZE  # OpenVPN drops shorter packets unread
# OpenVPN's control packets, wrapping and WKc included, are at most TLS_CHANNEL_BUF_SIZE
# (2048) bytes: ssl.c caps each at min(2048, --tls-mtu), and options.c caps --tls-mtu at
# 2048. Data packets stay below that too unless --tun-mtu is raised far above its default
# 1500 (then both peers must agree, or OpenVPN restarts on "Bad encapsulated packet
# length"). So a TCP frame longer than this, where OpenVPN is not known to run (a probe's
# first reply, a stream on an unknown port), is taken for another protocol.
MAX_PLAUSIBLE_FRAME = 2048


def plausible_tcp_frame(length: int, first: int) -> bool:
    """Could a TCP frame of this length (its 2-byte prefix), starting with this byte,
    be an OpenVPN packet - where nothing else says OpenVPN runs there?"""
    return MIN_PACKET <= length <= MAX_PLAUSIBLE_FRAME and first >> KEY_ID_BITS in OPCODES



WRAPPING_KINDS = ("none", "tls-auth", "tls-crypt", "tls-crypt-v2")


class Wrapping(NamedTuple):
    """How control packets are wrapped: information the reader is given.

    kind: one of WRAPPING_KINDS.
    hmac_size: tls-auth HMAC length in bytes.
    decrypted: tls-crypt only - the bytes after the tag are the plaintext
        (as ``wrap.TLSCrypt.unwrap`` returns them), so they are dissected.
    """

    kind: str = "none"
    hmac_size: int = 20
    decrypted: bool = False

    @classmethod
    def tls_auth(cls, digest_or_size="SHA1"):
        size = digest_or_size if isinstance(digest_or_size, int) else HMAC_SIZES[digest_name(digest_or_size)]
        return cls("tls-auth", hmac_size=size)

    @property
    def is_tls_crypt(self):
        return self.kind in ("tls-crypt", "tls-crypt-v2")

    @property
    def hides_control_fields(self):
        """True when ACKs, message packet-id and payload are encrypted."""
        return self.is_tls_crypt and not self.decrypted

    def __str__(self):
        if self.kind == "tls-auth":
            return f"tls-auth {DIGEST_BY_SIZE.get(self.hmac_size, f'{self.hmac_size}-byte')}"
        return self.kind + (" (decrypted)" if self.decrypted else "")


PLAIN = Wrapping()
DIGEST_BY_SIZE = {size: digest for digest, size in HMAC_SIZES.items()}


class MalformedPacket(ValueError):
    """Raised while dissecting bytes that cannot be what their opcode says."""


def wkc_length(data: bytes, start: int) -> int:
    """The length of the wrapped client key (WKc) at the end of ``data`` - its last two
    bytes say it, itself included - checked to fit after offset ``start``.
    Raises MalformedPacket with the reason."""
    left = max(len(data) - start, 0)
    if left < 2:
        raise MalformedPacket(f"{left} bytes left where a wrapped client key (WKc) belongs")
    length = int.from_bytes(data[-2:], "big")
    if not 2 <= length <= left:
        raise MalformedPacket(f"WKc length {length} in the last two bytes does not fit the {left} bytes left")
    return length
