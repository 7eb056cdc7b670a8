"""Processes a recording starts (all stopped in the end), and waiting on their logs."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from .layout import CAPTURES

INIT_DONE = "Initialization Sequence Completed"


class Procs:
    """Processes started for a recording; all of them are stopped in stop_all()."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, cwd=CAPTURES, **kw)
        self.procs.append((label, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = [(l, q) for (l, q) in self.procs if q is not p]

    def stop_all(self) -> None:
        for _, p in reversed(self.procs[:]):
            self.stop(p)


def wait_for(path: Path, pattern: str, timeout: float, proc: subprocess.Popen | None = None,
             count: int = 1) -> bool:
    """Poll a log file until `pattern` (regex) matched `count` times, or time out."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(rx.findall(path.read_text(errors="replace"))) >= count:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False
