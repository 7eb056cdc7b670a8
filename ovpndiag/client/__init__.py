"""The staged handshake: a userspace OpenVPN client, driven stage by stage.

    from ovpndiag.client import Client, HandshakeSettings
    client = Client(HandshakeSettings(probe=probe_settings(host="vpn.example.org"), ca="ca.crt",
                                      cert="client.crt", key="client.key"))
    result = client.run("push")          # reset -> tls -> auth -> push, stops at the first failure
    # or one by one: client.reset(); client.tls(); client.auth(); client.push(); client.data(); client.close()

Each stage returns a ``Stage``; ``run`` gathers them in a ``HandshakeResult`` with
a verdict from the shared vocabulary (ovpndiag.verdicts), a message and advice.
The client always ends cleanly: EXIT through the control channel when the server
announced cc-exit, else the data channel's explicit-exit-notify.

This module is cheap to import (no Scapy, no ssl): ``Client`` is loaded from
``session`` on first use.
"""

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

STAGES = ("reset", "tls", "auth", "push", "data")


class CredentialsError(ValueError):
    """An unreadable or unusable CA, certificate, key or passphrase (one line; UNKNOWN).
    Raised by ``Client(settings)`` before anything is sent."""


@dataclass
class Stage:
    name: str  # one of STAGES
    ok: bool
    elapsed: float  # seconds since the first packet was sent, when the stage ended
    detail: str  # one line for people
    facts: dict = field(default_factory=dict)  # machine-readable details of the stage

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "elapsed": round(self.elapsed, 6), "detail": self.detail,
                "facts": self.facts}


@dataclass
class HandshakeResult:
    host: str
    port: int
    proto: str
    address: Optional[str] = None
    stages: List[Stage] = field(default_factory=list)  # in order, those reached
    verdict: str = "ok"  # from ovpndiag.verdicts
    message: str = ""  # one line: what happened
    advice: List[str] = field(default_factory=list)  # what to try
    server_certificate: Optional[dict] = None  # subject, issuer, serial, not_before, not_after, days_left,
    #                                            verified, chain, key, signature_algorithm
    tls: Optional[dict] = None  # version, cipher
    push_reply: Optional[dict] = None  # parsed options (+ "raw")
    data: Optional[dict] = None  # cipher, sent, received, rtt (s), key_derivation ("tls-ekm"|"prf")
    exit_sent: Optional[str] = None  # "cc-exit" | "explicit-exit-notify" | None
    wrapping: str = ""  # e.g. "tls-auth SHA256, key-direction 1"
    elapsed: float = 0.0  # seconds from the first packet sent to the end of the last stage

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def stage(self, name) -> Optional[Stage]:
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict:
        """The JSON of issue 11: no key material, no password."""
        data = asdict(self)
        data["stages"] = [s.to_dict() for s in self.stages]
        data["ok"] = self.ok
        return data


@dataclass
class HandshakeSettings:
    """What to connect to (the probe's settings) and with which credentials.

    ca/cert/key are paths or PEM bytes; auth_user_pass is (user, password)."""

    probe: object  # ovpndiag.settings.ProbeSettings
    ca: Optional[object] = None
    cert: Optional[object] = None
    key: Optional[object] = None
    key_password: Optional[bytes] = None  # for an encrypted private key (--askpass)
    auth_user_pass: Optional[Tuple[str, str]] = None
    remote_cert_tls: Optional[str] = None  # "server"
    verify_x509_name: Optional[Tuple[str, str]] = None  # (name, "subject"|"name"|"name-prefix")
    data_ciphers: List[str] = field(default_factory=lambda: ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"])
    stage: str = "data"
    ping_target: Optional[str] = None
    count: int = 1
    keylog: Optional[str] = None  # NSS key log file for the control channel's TLS
    write: Optional[str] = None  # pcap of every packet sent and received
    tls_version_max: Optional[str] = None  # "1.2" or "1.3": to test a server's minimum
    compress: Optional[str] = None  # the profile's comp-lzo/compress line: the data channel's framing
    fragment: Optional[int] = None  # the profile's --fragment size: a fragment header on data packets (UDP)

    def __repr__(self):  # never show the password
        user = self.auth_user_pass[0] if self.auth_user_pass else None
        return (f"HandshakeSettings(probe={self.probe!r}, ca={_short(self.ca)}, cert={_short(self.cert)}, "
                f"key={_short(self.key)}, user={user!r}, stage={self.stage!r})")


def _short(value):
    if isinstance(value, (bytes, bytearray)):
        return "<PEM>"
    return repr(value)


def __getattr__(name):
    if name == "Client":  # lazy: the session pulls in Scapy and ssl
        from .session import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STAGES", "CredentialsError", "Stage", "HandshakeResult", "HandshakeSettings", "Client"]
