"""README.md stays true: its set-up commands and Python example."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].startswith("pip install . && ovpndiag dissect captures/")
    assert "pytest" in first_block[1] and "apt-get install -y openvpn" in first_block[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "openvpn" in ci and "python3 -m pytest -q" in ci


def test_python_example_runs_and_prints_what_it_says(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "P_CONTROL_HARD_RESET_SERVER_V2" in result.stdout and "acks=[0]" in result.stdout


def test_first_command_runs_the_main_job_on_a_bundled_capture():
    first = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()[0]
    command = first.split("&& ", 1)[1].split()
    assert command[0] == "ovpndiag"
    result = subprocess.run([sys.executable, "-m", "ovpndiag", *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[Client Hello]" in result.stdout and "tag ok" in result.stdout


def test_version_and_help_from_the_installed_entry_points():
    for command in ([sys.executable, "-m", "ovpndiag", "--version"], [sys.executable, "-m", "ovpndiag", "--help"]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout
    assert "0.1.0" in subprocess.run([sys.executable, "-m", "ovpndiag", "--version"], capture_output=True,
                                     text=True, cwd=ROOT).stdout
