"""Where a recording reads keys from and writes captures, logs and documents to."""

from dataclasses import dataclass
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent.parent   # captures/: keys and the openvpn processes' cwd
KEYS = CAPTURES / "keys"


@dataclass(frozen=True)
class Layout:
    """The output folder: captures/ itself, or another one (``record.py --out DIR``), to
    re-record without touching the bundled captures. Keys are always captures/keys/."""
    out: Path = CAPTURES

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.json"

    @property
    def readme(self) -> Path:
        return self.out / "README.md"
