"""Text a peer chose (certificate names) never writes control characters to the
terminal: a crafted certificate's newline or escape sequence is shown escaped by
dissect -V, --sessions and analyze alike."""

import subprocess
import sys

import pytest

from captures import CAPTURES


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """fail-expired-server-cert.pcap (TLS 1.2: certificates in clear) with the server's
    CN replaced by as many bytes holding a newline and a terminal colour escape."""
    data = (CAPTURES / "fail-expired-server-cert.pcap").read_bytes()
    name = b"ovpndiag-test-server"
    forged = b"x\nverdict: ok\x1b[31m!!"
    assert len(forged) == len(name) and name in data
    path = tmp_path_factory.mktemp("crafted") / "crafted.pcap"
    path.write_bytes(data.replace(name, forged))
    return path


@pytest.mark.parametrize("options", [["dissect", "-V"], ["dissect", "--sessions"], ["analyze"]])
def test_a_crafted_certificate_name_is_shown_escaped(crafted, options):
    result = subprocess.run([sys.executable, "-m", "ovpndiag", *options, str(crafted)], capture_output=True)
    out = result.stdout
    assert b"\x1b" not in out and b"\nverdict: ok" not in out
    assert b"x\\nverdict: ok\\x1b[31m!!" in out  # (the name is there, escaped: not dropped)
