"""An NSS key log (``SSLKEYLOGFILE`` format), as ``ovpndiag handshake --keylog`` and
browsers write it: one ``LABEL <client random, hex> <secret, hex>`` a line, ``#`` comments.

Labels read: ``CLIENT_RANDOM`` (TLS 1.2: the 48-byte master secret) and the TLS 1.3
traffic secrets ``CLIENT_HANDSHAKE_TRAFFIC_SECRET``, ``SERVER_HANDSHAKE_TRAFFIC_SECRET``,
``CLIENT_TRAFFIC_SECRET_0``, ``SERVER_TRAFFIC_SECRET_0``. Others (``EXPORTER_SECRET``,
early-data secrets, ``RSA``) are skipped. A file that cannot be read, or holds no line
of these, is a ``KeyLogError`` with one line of text (the CLI's exit code 2).

Secrets are held in the object only: its repr and every error name the file, never a
secret (nor a line of the file, which may hold one).
"""

import os
from typing import Dict, Optional

MAX_BYTES = 64 * 1024 * 1024   # ~300,000 TLS 1.3 sessions; bigger is not a key log of a capture's sessions
LABELS = ("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
          "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")
_SKIPPED = ("EXPORTER_SECRET", "CLIENT_EARLY_TRAFFIC_SECRET", "EARLY_EXPORTER_SECRET", "RSA",
            "CLIENT_TRAFFIC_SECRET_1", "SERVER_TRAFFIC_SECRET_1")


class KeyLogError(ValueError):
    """The key log cannot be used (one line, names the file, never a secret)."""


class KeyLog:
    """Secrets by client random: ``secrets(client_random) -> {label: bytes}``."""

    __slots__ = ("path", "_by_random")

    def __init__(self, by_random: Optional[Dict[bytes, Dict[str, bytes]]] = None, path: str = ""):
        self.path = path
        self._by_random = by_random or {}

    @classmethod
    def read(cls, path) -> "KeyLog":
        path = os.fspath(path)
        try:
            if os.path.isdir(path):
                raise KeyLogError(f"key log {path}: is a directory")
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > MAX_BYTES:
                    raise KeyLogError(f"key log {path}: {size} bytes, more than the {MAX_BYTES >> 20} MiB "
                                      "a key log of a capture's sessions needs")
                data = file.read(MAX_BYTES + 1)
        except OSError as error:
            raise KeyLogError(f"key log {path}: cannot read: {error.strerror or error}") from None
        if len(data) > MAX_BYTES:  # (a pipe or a file that grew)
            raise KeyLogError(f"key log {path}: more than {MAX_BYTES >> 20} MiB")
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, path: str = "") -> "KeyLog":
        if b"\0" in data[:4096]:  # (a capture or other binary file given by mistake: no need to read it all)
            raise KeyLogError(f"key log {path or '(data)'}: is not an NSS key log (binary data)")
        by_random: Dict[bytes, Dict[str, bytes]] = {}
        bad = known = 0
        for line in data.splitlines():
            words = line.split()
            if not words or words[0].startswith(b"#"):
                continue
            label = words[0].decode("ascii", "replace")
            if label in _SKIPPED:
                known += 1
                continue
            if label not in LABELS or len(words) != 3:
                bad += 1
                continue
            try:
                random, secret = bytes.fromhex(words[1].decode("ascii")), bytes.fromhex(words[2].decode("ascii"))
            except ValueError:
                bad += 1
                continue
            if len(random) != 32 or not secret:
                bad += 1
                continue
            by_random.setdefault(random, {})[label] = secret
        if not by_random:
            what = "is empty" if not (bad or known) else (
                "holds no CLIENT_RANDOM or TLS 1.3 traffic secret lines" if known and not bad
                else "is not an NSS key log (no 'LABEL <client random> <secret>' line)")
            raise KeyLogError(f"key log {path or '(data)'}: {what}")
        return cls(by_random, path)

    def secrets(self, client_random: bytes) -> Dict[str, bytes]:
        """The secrets logged for the session with this ClientHello random ({} if none)."""
        return self._by_random.get(client_random, {})

    def __len__(self) -> int:
        """How many sessions (client randoms) the log has secrets for."""
        return len(self._by_random)

    def __contains__(self, client_random) -> bool:
        return client_random in self._by_random

    def __repr__(self) -> str:
        return f"KeyLog({self.path!r}, {len(self)} sessions)"
