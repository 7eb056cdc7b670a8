"""OpenVPN key files: static keys (tls-auth, tls-crypt) and tls-crypt-v2 keys.

Key objects hold secrets; their repr and str name where the key came from and
never show a byte of it. Every problem with a file is a ``KeyFileError`` whose
message is one line naming the file and what is wrong with it.
"""

import base64
import binascii
import os
import re
import stat

STATIC_KEY_SIZE = 256  # two keys of cipher(64) | hmac(64)
TLS_CRYPT_V2_SERVER_KEY_SIZE = 128  # Ke(64) | Ka(64), 32 bytes of each used
TLS_CRYPT_V2_MAX_WKC_SIZE = 1024
# The biggest key file is a tls-crypt-v2 client key with the largest WKc: under 2 KB of
# base64. Comments make room for more, but nothing near this: /dev/zero or a capture
# given by mistake is refused at once instead of read whole.
MAX_KEY_FILE_SIZE = 64 * 1024

STATIC_KEY_LABEL = "OpenVPN Static key V1"
V2_CLIENT_LABEL = "OpenVPN tls-crypt-v2 client key"
V2_SERVER_LABEL = "OpenVPN tls-crypt-v2 server key"

_BLOCK = re.compile(r"-----BEGIN ([^\n]+?)-----(.*?)-----END \1-----", re.S)


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file."""


class StaticKey:
    """The 256-byte static key of tls-auth and tls-crypt (and tls-crypt-v2's Kc).

    It is two keys of ``cipher(64) | hmac(64)``; ``cipher(i)``/``hmac(i)`` give
    the 64-byte slots of key ``i`` (0 or 1). Which slot a peer uses for what is
    decided in ``wrap``.
    """

    __slots__ = ("_material", "source")

    def __init__(self, material: bytes, source: str = "inline"):
        if len(material) != STATIC_KEY_SIZE:
            raise KeyFileError(f"{source}: static key has {len(material)} bytes, expected {STATIC_KEY_SIZE}")
        self._material = bytes(material)
        self.source = source

    def cipher(self, index: int) -> bytes:
        return self._material[128 * index:128 * index + 64]

    def hmac(self, index: int) -> bytes:
        return self._material[128 * index + 64:128 * index + 128]

    def __eq__(self, other):
        return isinstance(other, StaticKey) and self._material == other._material

    def __hash__(self):
        return hash(self._material)

    def __repr__(self):
        return f"<StaticKey from {self.source}>"

    __str__ = __repr__


class TLSCryptV2ServerKey:
    """The server's tls-crypt-v2 key: wraps and unwraps the clients' keys."""

    __slots__ = ("encrypt_key", "auth_key", "source")

    def __init__(self, material: bytes, source: str = "inline"):
        if len(material) != TLS_CRYPT_V2_SERVER_KEY_SIZE:
            raise KeyFileError(f"{source}: tls-crypt-v2 server key has {len(material)} bytes, "
                               f"expected {TLS_CRYPT_V2_SERVER_KEY_SIZE}")
        self.encrypt_key = material[0:32]
        self.auth_key = material[64:96]
        self.source = source

    def __repr__(self):
        return f"<TLSCryptV2ServerKey from {self.source}>"

    __str__ = __repr__


class TLSCryptV2ClientKey:
    """A client's tls-crypt-v2 key: its own key Kc and Kc wrapped for the server (WKc)."""

    __slots__ = ("kc", "wkc", "source")

    def __init__(self, material: bytes, source: str = "inline"):
        kc, wkc = material[:STATIC_KEY_SIZE], material[STATIC_KEY_SIZE:]
        if len(kc) < STATIC_KEY_SIZE or len(wkc) < 2 + 32:
            raise KeyFileError(f"{source}: tls-crypt-v2 client key is too short ({len(material)} bytes)")
        if int.from_bytes(wkc[-2:], "big") != len(wkc) or len(wkc) > TLS_CRYPT_V2_MAX_WKC_SIZE:
            raise KeyFileError(f"{source}: tls-crypt-v2 client key's wrapped key has a bad length")
        self.kc = StaticKey(kc, source)
        self.wkc = wkc
        self.source = source

    def __repr__(self):
        return f"<TLSCryptV2ClientKey from {self.source}>"

    __str__ = __repr__


def parse_key(text: str, source: str = "inline"):
    """Parse key text (the first key block in it) into the key object it holds."""
    match = _BLOCK.search(text.replace("\r\n", "\n"))
    if not match:
        raise KeyFileError(f"{source}: no '-----BEGIN OpenVPN ...-----' key block found")
    label, body = match.group(1), match.group(2)
    if label == STATIC_KEY_LABEL:
        return StaticKey(_decode_hex(body, source), source)
    if label == V2_CLIENT_LABEL:
        return TLSCryptV2ClientKey(_decode_base64(body, source), source)
    if label == V2_SERVER_LABEL:
        return TLSCryptV2ServerKey(_decode_base64(body, source), source)
    raise KeyFileError(f"{source}: '{label}' is not an OpenVPN static or tls-crypt-v2 key")


def read_key(path, expect=None):
    """Read a key file; ``expect`` (a key class or tuple of them) rejects other kinds."""
    source = str(path)
    data = read_small_file(path, MAX_KEY_FILE_SIZE, "key file", KeyFileError)
    key = parse_key(data.decode("ascii", "replace"), source)
    if expect is not None and not isinstance(key, expect):
        raise KeyFileError(f"{source}: holds {_kind(type(key))}, expected {_kinds(expect)}")
    return key


def read_small_file(path, limit: int, what: str, error=KeyFileError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ``error`` with one line.

    A pipe or a device is refused before it is read: a FIFO without a writer would
    block (opened non-blocking, so not even open() waits), /dev/zero never ends."""
    source = str(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise error(_not_regular(source, os.stat(path).st_mode, what))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{source}: no such file") from None
    except OSError as failure:
        raise error(f"{source}: cannot read: {failure.strerror or failure}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat() and open()
            raise error(_not_regular(source, mode, what))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as failure:
        raise error(f"{source}: cannot read: {failure.strerror or failure}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{source}: is larger than a {what} can be (more than {limit // 1024} KiB)")
    return b"".join(chunks)


def _not_regular(source, mode, what):
    if stat.S_ISDIR(mode):
        return f"{source}: is a directory, not a {what}"
    kind = "a pipe" if stat.S_ISFIFO(mode) else ("a socket" if stat.S_ISSOCK(mode) else "a device")
    return f"{source}: is {kind}, not a regular file: give the {what} itself"


def read_static_key(path) -> StaticKey:
    return read_key(path, StaticKey)


def _kind(cls):
    return {StaticKey: "an OpenVPN static key (tls-auth/tls-crypt)",
            TLSCryptV2ClientKey: "a tls-crypt-v2 client key",
            TLSCryptV2ServerKey: "a tls-crypt-v2 server key"}[cls]


def _kinds(expect):
    return " or ".join(_kind(cls) for cls in (expect if isinstance(expect, tuple) else (expect,)))


def _key_lines(body):
    """The lines of a key block, without comments and blank lines."""
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            yield line


def _decode_hex(body, source):
    digits = "".join(_key_lines(body))
    try:
        material = binascii.unhexlify(digits)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: static key is not valid hex") from None
    return material


def _decode_base64(body, source):
    try:
        return base64.b64decode("".join(_key_lines(body)), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: key is not valid base64") from None
