"""contrib/'s monitoring files, checked by the real Icinga 2 and Nagios 4 (Debian packages
icinga2 and nagios4, installed by .ci/run): they load, and Icinga 2 calls the plugin with
the address a host really has, IPv4 or IPv6."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ICINGA_FILE = ROOT / "contrib" / "icinga2" / "ovpndiag.conf"
NAGIOS_FILE = ROOT / "contrib" / "nagios" / "ovpndiag.cfg"

# Hosts as users define them; the plugin must get the address in the third column, and -6
# exactly where the fourth says. (Loopback only: nothing is probed, the plugin is a recorder.)
HOSTS = [
    ("v4only", 'address = "127.0.0.1"', "127.0.0.1", False),
    ("v6only", 'address6 = "::1"', "::1", False),
    ("dual", 'address = "127.0.0.2"; address6 = "::2"', "127.0.0.2", False),
    ("dual-v6", 'address = "127.0.0.3"; address6 = "::3"; vars.ovpndiag_ipv6 = true', "::3", True),
]


def _icinga_config(tmp_path):
    plugins, calls = tmp_path / "plugins", tmp_path / "calls"
    plugins.mkdir()
    calls.mkdir()
    recorder = plugins / "ovpndiag"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {calls}/$$\necho "OPENVPN OK - recorded"\n')
    recorder.chmod(0o755)
    hosts = "\n".join(f'object Host "{name}" {{ import "test-host"; {attributes} }}'
                      for name, attributes, _, _ in HOSTS)
    config = tmp_path / "icinga2.conf"
    config.write_text(f"""
include <itl>
include <plugins>
const PluginDir = "{plugins}"
object CheckerComponent "checker" {{ }}
template Service "generic-service" {{ max_check_attempts = 3; check_interval = 1m; retry_interval = 30s }}
include "{ICINGA_FILE}"
template Host "test-host" {{ check_command = "dummy"; check_interval = 1h }}
{hosts}
object Host "example" {{ import "test-host"; address = "127.0.0.9"; vars.openvpn = true }}
apply Service "probe" {{
  check_command = "ovpndiag"
  check_interval = 1s
  retry_interval = 1s
  max_check_attempts = 1
  vars.ovpndiag_port = 1195
  assign where host.name != "example"
}}
""")
    state = tmp_path / "state"
    state.mkdir()
    paths = {"DataDir": state, "InitRunDir": state, "CacheDir": state, "LogDir": state, "SpoolDir": state,
             "PidPath": state / "pid", "StatePath": state / "state", "ObjectsPath": state / "objects",
             "VarsPath": state / "vars", "ModAttrPath": state / "modattr", "RunAsUser": "root",
             "RunAsGroup": "root"}
    defines = [f"-DConfiguration.{name}={value}" for name, value in paths.items()]
    return config, defines, calls


def test_icinga2_validates_the_check_command_and_its_example_service(tmp_path):
    assert shutil.which("icinga2"), "icinga2 is needed (Debian package icinga2; see .ci/run)"
    config, defines, _ = _icinga_config(tmp_path)
    result = subprocess.run(["icinga2", "daemon", "-C", "-c", str(config), *defines, "-x", "warning"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning/" not in result.stdout + result.stderr and "critical/" not in result.stdout + result.stderr
    # The example apply rules gave the "example" host its services: four probes and two examples.
    objects = subprocess.run(["icinga2", "object", "list", "--type", "Service", *defines],
                             capture_output=True, text=True, timeout=60).stdout
    assert "Object 'example!openvpn' of type 'Service'" in objects
    assert "Object 'example!openvpn-handshake' of type 'Service'" in objects
    assert objects.count("of type 'Service'") == len(HOSTS) + 2


def test_icinga2_gives_the_plugin_the_hosts_ipv4_or_ipv6_address(tmp_path):
    """The ITL convention: address, or address6 on an IPv6-only host or with ovpndiag_ipv6;
    the plugin from PluginDir. Icinga 2 runs the checks for real, the plugin records them."""
    assert shutil.which("icinga2"), "icinga2 is needed (Debian package icinga2; see .ci/run)"
    config, defines, calls = _icinga_config(tmp_path)
    log = (tmp_path / "icinga2.log").open("w")
    daemon = subprocess.Popen(["icinga2", "daemon", "-c", str(config), *defines], stdout=log, stderr=log,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    expected = {(address, ipv6) for _, _, address, ipv6 in HOSTS}
    seen = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not expected <= seen:
            time.sleep(0.2)
            for call in calls.iterdir():
                args = call.read_text().splitlines()
                if args:  # a file being written may still be empty
                    seen.add((args[1], "-6" in args))
                    assert args[0] == "check" and args[2:4] == ["--port", "1195"] and "-4" not in args, args
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()
    assert seen == expected, (tmp_path / "icinga2.log").read_text()[-3000:]


def _nagios_verify(tmp_path, *extra):
    """nagios4 -v on Debian's own main configuration (its sample templates, commands and
    localhost) plus the files given; as root, since Nagios would read it as its own user,
    which may not enter tmp_path. Returns the result and the counts it checked."""
    main = tmp_path / "nagios.cfg"
    main.write_text(Path("/etc/nagios4/nagios.cfg").read_text() + "\nnagios_user=root\nnagios_group=root\n"
                    + "".join(f"cfg_file={path}\n" for path in extra))
    result = subprocess.run(["nagios4", "-v", str(main)], capture_output=True, text=True, timeout=60)
    counts = dict((kind, int(number)) for number, kind in re.findall(r"Checked (\d+) ([a-z ]+)\.", result.stdout))
    return result, counts


def test_nagios4_validates_the_commands_and_example_in_a_stock_configuration(tmp_path):
    assert shutil.which("nagios4"), "nagios4 is needed (Debian package nagios4; see .ci/run)"
    result, counts = _nagios_verify(tmp_path, NAGIOS_FILE)
    assert result.returncode == 0, result.stdout
    assert "Total Warnings: 0" in result.stdout and "Total Errors:   0" in result.stdout, result.stdout
    _, stock = _nagios_verify(tmp_path)
    assert (counts["commands"], counts["hosts"], counts["services"]) == (
        stock["commands"] + 3, stock["hosts"] + 1, stock["services"] + 2)


def test_nagios_commands_take_the_plugin_from_user1():
    lines = [line.split(None, 1)[1] for line in NAGIOS_FILE.read_text().splitlines()
             if line.strip().startswith("command_line")]
    assert lines and all(line.strip().startswith("$USER1$/ovpndiag check '$HOSTADDRESS$'") for line in lines)
