"""README.md stays true: its two set-up commands (the first run for real on Debian's own
Python in a fresh venv, the second being what CI runs) and its Python example."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SETUP = re.search(r"\A# ovpndiag\n\n```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
# A fresh root shell on Debian: its PATH and nothing of this machine's Python set-up (pyenv,
# pip settings), so `python3` is Debian's own, which refuses a plain `pip install`.
DEBIAN_ROOT_ENV = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
                   "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def _commands(script):
    """The commands a shell script runs, without comments, `set` and `cd` lines."""
    return [line for line in (raw.strip() for raw in script.splitlines())
            if line and not line.startswith(("#", "set ", "cd "))]


def test_readme_opens_with_two_commands_and_ci_runs_the_second_word_for_word():
    assert len(SETUP) == 2
    assert _commands((ROOT / ".ci" / "run").read_text()) == [SETUP[1]]
    steps = SETUP[1].split(" && ")
    assert steps[-3:] == ["python3 -m venv .venv", ".venv/bin/pip install -e '.[test]'",
                          ".venv/bin/python -m pytest -q"]


def _apt_packages(command):
    install = next(step for step in command.split(" && ") if " apt-get install " in f" {step} ")
    return [word for word in shlex.split(install.split("install", 1)[1]) if not word.startswith("-")]


def test_second_command_installs_every_program_the_tests_run():
    """Each program a test starts comes from a Debian package the command installs (or one
    that such a package depends on, as tshark brings editcap and mergecap)."""
    programs = {"openvpn"}  # started through tests/servers.py's argv lists
    for source in (ROOT / "tests").glob("*.py"):
        programs |= set(re.findall(r"""(?:run|Popen|check_output)\(\s*\[\s*["']([\w.-]+)["']""", source.read_text()))
    programs.discard("git")  # which made the checkout
    assert {"tshark", "icinga2", "nagios4", "editcap"} <= programs
    listed = _apt_packages(SETUP[1])
    reachable = set(listed)
    for package in listed:
        depends = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", package],
                                 capture_output=True, text=True).stdout
        reachable |= set(re.findall(r"^\s+\|?(?:Pre)?Depends: ([\w.+-]+)", depends, re.M))
    for program in sorted(programs):
        path = shutil.which(program)
        assert path, f"{program}: not installed"
        real = os.path.realpath(path)  # dpkg may know it by its pre-/usr-merge name
        owner = subprocess.run(["dpkg-query", "-S", real, real.removeprefix("/usr")], capture_output=True, text=True)
        package = owner.stdout.split(":")[0]
        status = subprocess.run(["dpkg-query", "-W", "-f", "${Essential} ${Priority}", package],
                                capture_output=True, text=True).stdout.split()
        base_system = status[:1] == ["yes"] or status[-1:] == ["required"]  # on every Debian machine
        assert package and (base_system or package in reachable), (program, package, listed)


def test_first_command_installs_and_runs_on_debian_python_in_a_fresh_checkout(tmp_path):
    """The first command as written, in a copy of the checkout, from a fresh root shell."""
    first = SETUP[0]
    assert "pip install ." in first and first.split(" && ")[-1].startswith(".venv/bin/ovpndiag dissect captures/")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    result = subprocess.run(["bash", "-c", first], cwd=tmp_path, env=DEBIAN_ROOT_ENV, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The decrypted control channel of the tls-crypt session, in the installed tool's words.
    assert "[Client Hello]" in result.stdout and result.stdout.count("tag ok") >= 10, result.stdout[-3000:]
    venv_python = tmp_path / ".venv" / "bin" / "python"
    base = subprocess.run([str(venv_python), "-c", "import sys, ovpndiag; print(sys.base_prefix, ovpndiag.__file__)"],
                          cwd="/", capture_output=True, text=True, check=True).stdout.split()
    # The venv is Debian's Python's (the one that refuses a plain `pip install .`, the old first
    # command), and ovpndiag ran from the venv, not from the checkout.
    assert base[0] == "/usr" and list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED")), base
    assert base[1].startswith(str(tmp_path / ".venv" / "lib")), base


def test_python_example_runs_and_prints_what_it_says(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.split("## The layers in Python", 1)[1], re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "P_CONTROL_HARD_RESET_SERVER_V2" in result.stdout and "acks=[0]" in result.stdout


def test_version_and_help_from_the_installed_entry_points():
    for command in ([sys.executable, "-m", "ovpndiag", "--version"], [sys.executable, "-m", "ovpndiag", "--help"]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout
    assert "0.1.0" in subprocess.run([sys.executable, "-m", "ovpndiag", "--version"], capture_output=True,
                                     text=True, cwd=ROOT).stdout


def test_library_example_does_what_dissect_does(tmp_path):
    """The README's ten lines of Python print what `dissect --tls-crypt KEY --sessions` prints,
    and write the decrypted capture `--write-decrypted` writes."""
    section = README.split("## Dissection as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "captures").symlink_to(ROOT / "captures")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 0, result.stderr
    command = [sys.executable, "-m", "ovpndiag", "dissect", "captures/udp-tls-crypt.pcap", "--tls-crypt",
               "captures/keys/tc.key"]
    listing = subprocess.run(command + ["--write-decrypted", "cli.pcap"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60).stdout.splitlines()
    printed = result.stdout.splitlines()
    assert len(listing) > 10
    for line, shown in zip(listing, printed):  # every packet's line, and a control packet's tag checked
        assert shown.startswith(line + (" True " if "P_DATA" not in line else " None None"))
    tally = subprocess.run(command + ["--sessions"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60).stdout.splitlines()[-1]  # "FILE: N frames, ..."
    frames = int(re.match(r"captures/udp-tls-crypt.pcap: (\d+) frames", tally).group(1))
    assert printed[len(listing)] == f"captures/udp-tls-crypt.pcap {frames} frames, read to its end"
    sessions = [json.loads(line) for line in subprocess.run(command + ["--sessions", "--json"], cwd=tmp_path,
                                                            capture_output=True, text=True, timeout=60).stdout.splitlines()]
    assert sessions and printed[len(listing) + 1:] == [f"{s['client_session_id']} {s['wrapping']} {s['packets']}"
                                                       for s in sessions]
    assert (tmp_path / "decrypted.pcap").read_bytes() == (tmp_path / "cli.pcap").read_bytes()
