"""How far other processes have read a file: the progress line's share when workers
(dissect.parallel) each read the capture and the parent reads nothing itself.

Linux tells it in /proc/PID/fdinfo/FD ("pos:"); elsewhere, or for a process that
has not opened the file (yet, or any more), the answer is None. Which descriptor
is the file is found once per process (its /proc/PID/fd link names the file).
"""

import os
from typing import Dict, Iterable, Optional


class ReadShare:
    """``share()``: the least any of ``pids`` has read of ``path``, as a fraction of its size."""

    def __init__(self, pids: Iterable[int], path):
        self.pids = list(pids)
        self.target = os.path.realpath(path)
        try:
            self.size = os.path.getsize(path)
        except OSError:
            self.size = 0
        self.descriptors: Dict[int, str] = {}  # pid -> its descriptor of the file

    def share(self) -> Optional[float]:
        if not self.size or not self.pids:
            return None
        positions = [self._position(pid) for pid in self.pids]
        if None in positions:
            return None
        return min(1.0, min(positions) / self.size)

    def _position(self, pid) -> Optional[int]:
        descriptor = self.descriptors.get(pid) or self._find(pid)
        if descriptor is None:
            return None
        try:
            with open(f"/proc/{pid}/fdinfo/{descriptor}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            self.descriptors.pop(pid, None)  # (closed, or the process is gone)
        return None

    def _find(self, pid) -> Optional[str]:
        try:
            for descriptor in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{descriptor}") == self.target:
                        self.descriptors[pid] = descriptor
                        return descriptor
                except OSError:
                    continue
        except OSError:  # no /proc, or not ours to look at
            pass
        return None
