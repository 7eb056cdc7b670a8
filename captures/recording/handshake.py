"""Scenarios of kind "handshake": the client is ``ovpndiag handshake --keylog`` from this
checkout (group "keylog"), so the capture comes with the NSS key log of its TLS session,
``captures/NAME.keys``, for ``ovpndiag analyze --keylog`` and its tests (throw-away
test sessions: these secrets open nothing else).

The handshake runs to its end (or its ``-t``) while tcpdump records; its report is the
client log. "connected" means its verdict is OK (data went through the tunnel both ways).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .layout import CAPTURES, Layout
from .scenario import Scenario

OK = "Verdict: OK"


def keylog_file(sc: Scenario, layout: Layout) -> Path:
    return layout.out / f"{sc.name}.keys"


def handshake_argv(sc: Scenario, keylog: Path) -> list[str]:
    argv = [sys.executable, "-m", "ovpndiag", "handshake", "127.0.0.1" if sc.family == 4 else "::1",
            "-p", str(sc.port), "--proto", sc.transport, "--color", "never",
            "--ca", "keys/ca.crt", "--cert", f"keys/{sc.client_cert}.crt", "--key", f"keys/{sc.client_cert}.key",
            "--keylog", str(keylog)]
    side = sc.client
    if sc.wrapping == "tls-auth":
        argv += ["--tls-auth", side.key, "--auth", side.auth,
                 "--key-direction", "none" if side.key_direction is None else str(side.key_direction)]
    elif sc.wrapping in ("tls-crypt", "tls-crypt-v2"):
        argv += [f"--{sc.wrapping}", side.key]
    return argv + sc.client_extra


def run_handshake(sc: Scenario, log, layout: Layout) -> None:
    """Run the handshake into ``log``; its key log goes to NAME.keys.tmp (kept by keep_keylog)."""
    keylog = Path(f"{keylog_file(sc, layout)}.tmp")
    keylog.unlink(missing_ok=True)                 # (--keylog appends)
    argv = handshake_argv(sc, keylog.relative_to(CAPTURES) if keylog.is_relative_to(CAPTURES) else keylog)
    env = dict(os.environ, PYTHONPATH=str(CAPTURES.parent), NO_COLOR="1")
    log.write("$ ovpndiag " + " ".join(argv[3:]) + "\n")
    log.flush()
    subprocess.run(argv, cwd=CAPTURES, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    if not keylog.exists() or not keylog.read_text().strip():
        raise RuntimeError(f"ovpndiag handshake wrote no key log ({keylog})")


def connected(log_text: str) -> bool:
    return OK in log_text


def keep_keylog(sc: Scenario, layout: Layout) -> None:
    final = keylog_file(sc, layout)
    os.replace(f"{final}.tmp", final)
    os.chmod(final, 0o644)
