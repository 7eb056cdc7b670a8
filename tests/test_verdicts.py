"""The diagnosis vocabulary shared by the live client and the capture analyzer."""

import pytest

from ovpndiag import verdicts
from ovpndiag.client import STAGES

ISSUE_12 = ["ok", "port-closed", "server-silent", "no-tls-auth", "wrong-key", "wrong-key-direction", "wrong-digest",
            "client-hello-rejected", "server-certificate-rejected", "client-certificate-rejected", "auth-failed",
            "stopped-after-tls", "data-one-way", "incomplete"]
LIVE = ["auth-pending", "push-timeout", "server-restart", "server-halted", "no-shared-cipher", "max-clients",
        "certificate-expiring", "certificate-expired", "unresolvable"]


def test_every_name_of_the_issues_is_there_with_a_stage_a_meaning_and_advice():
    for name in ISSUE_12 + LIVE:
        verdict = verdicts.get(name)
        assert verdict.name == name
        assert verdict.stage in STAGES or (verdict.stage is None and name in ("incomplete", "max-clients"))
        assert verdict.meaning and "\n" not in verdict.meaning
        assert bool(verdict.advice) == (name != "ok"), name
    assert verdicts.STAGES == STAGES  # one list of stages for the client and the vocabulary


def test_monitoring_states():
    assert verdicts.state_of("ok") == 0
    assert verdicts.state_of("certificate-expiring") == 1
    assert verdicts.state_of("auth-pending") == 1
    assert [verdicts.state_of(n) for n in ("auth-failed", "server-silent", "client-hello-rejected")] == [2, 2, 2]
    assert verdicts.state_of("unresolvable") == 3
    assert verdicts.state_of("no-such-verdict") == 3


@pytest.mark.parametrize("days, expected", [
    (None, (0, None)), (31, (0, None)), (30, (1, "certificate-expiring")), (8, (1, "certificate-expiring")),
    (7, (2, "certificate-expiring")), (0, (2, "certificate-expiring")), (-0.5, (2, "certificate-expired"))])
def test_certificate_days(days, expected):
    assert verdicts.certificate_state(days, 30, 7) == expected


def test_not_yet_valid_is_critical():
    assert verdicts.certificate_state(400, 30, 7, not_yet_valid=True) == (2, "certificate-not-yet-valid")


def test_probe_names():
    assert verdicts.from_probe("no-reply") == "server-silent"
    assert verdicts.from_probe("port-closed") == "port-closed"
    from ovpndiag import probe

    for name in (probe.NO_REPLY, probe.PORT_CLOSED, probe.NO_CONNECTION, probe.CONNECTION_CLOSED,
                 probe.CONNECTION_RESET, probe.NOT_OPENVPN, probe.BAD_AUTH, probe.WRONG_REPLY,
                 probe.UNRESOLVABLE, probe.UNREACHABLE, probe.OK):
        assert verdicts.from_probe(name) in verdicts.VERDICTS, name


def test_every_verdict_the_client_names_is_in_the_vocabulary():
    """A name outside the vocabulary would reach check as UNKNOWN: catch a typo here."""
    import re
    from pathlib import Path

    client = Path(verdicts.__file__).parent / "client"
    named = set()
    for source in client.glob("*.py"):
        text = source.read_text()
        named |= set(re.findall(r'_StageFailed\(\s*"([a-z-]+)"', text))
        named |= set(re.findall(r'_verdict\(\s*"([a-z-]+)"', text))
        named |= set(re.findall(r'verdict"?\]?\s*[=:]\s*"([a-z-]+)"', text))
    assert {"server-certificate-rejected", "auth-failed", "echo-unanswered"} <= named  # the scan finds them
    assert named <= set(verdicts.VERDICTS), named - set(verdicts.VERDICTS)
