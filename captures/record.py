#!/usr/bin/env python3
"""Record the real OpenVPN 2.6 loopback captures bundled with ovpndiag.

For every scenario this script starts ``tcpdump -i lo`` on the scenario's port, a real
OpenVPN 2.6 server and a real OpenVPN 2.6 client (two separate ``openvpn`` processes with
their own tun devices, talking over 127.0.0.1 or ::1 only), waits for the expected outcome,
lets ``--ping 1`` keepalives flow for a few seconds and stops everything again. It writes

* ``captures/NAME.pcap``                      - the capture (classic pcap, linktype Ethernet)
* ``captures/logs/NAME.server.log``           - the server's verb-3 log
* ``captures/logs/NAME.client.log``           - the client's verb-3 log
* ``captures/manifest.json``                  - machine-readable description of every capture
* ``captures/README.md``                      - human-readable description and table

and creates the throw-away test PKI and static keys in ``captures/keys/`` if they are
missing (existing keys are never replaced unless ``--new-keys`` is given, because the
captures were made with them).

It needs root (tun devices, packet capture, binding port 443) plus the ``openvpn`` and
``tcpdump`` binaries; the Python side uses only the standard library and ``cryptography``.

    sudo python3 captures/record.py --list
    sudo python3 captures/record.py [--force] [NAME ...]
    sudo python3 captures/record.py --docs-only      # only rewrite manifest.json/README.md

Existing captures are not overwritten without ``--force``. A scenario that does not reach
its expected outcome (per the OpenVPN logs and a small check of the capture) is an error;
its unfinished files are left as ``*.tmp`` for inspection.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent          # captures/
KEYS = HERE / "keys"
LOGS = HERE / "logs"
MANIFEST = HERE / "manifest.json"
README = HERE / "README.md"

CONNECT_TIMEOUT = 20.0      # seconds to wait for "Initialization Sequence Completed"
KEEPALIVE_SECONDS = 3.0     # how long to let pings flow after connecting
FAIL_SECONDS = 4.5          # how long to record a failing handshake
RENEG_SECONDS = 3           # client --reneg-sec for the renegotiation scenario
RENEG_TIMEOUT = 15.0

INIT_DONE = "Initialization Sequence Completed"


# --------------------------------------------------------------------------- scenarios

@dataclass
class Side:
    """One peer's wrapping settings (what goes into the manifest)."""
    key: str | None = None              # key file relative to captures/
    auth: str | None = None             # --auth digest when tls-auth is used
    key_direction: int | None = None    # tls-auth key direction, None = bidirectional/none


@dataclass
class Scenario:
    name: str
    transport: str                      # "udp" | "tcp"
    family: int                         # 4 | 6
    port: int
    wrapping: str                       # "none" | "tls-auth" | "tls-crypt" | "tls-crypt-v2"
    server: Side
    client: Side
    outcome: str                        # "connected" | "failed"
    description: str
    shows: str                          # longer text for the README table
    renegotiation: bool = False
    client_cert: str = "client"         # basename of the client's cert/key in keys/
    server_log_expect: str | None = None  # regex the server log must match (failures)
    client_extra: list[str] = field(default_factory=list)
    server_extra: list[str] = field(default_factory=list)

    @property
    def data_channel(self) -> bool:
        return self.outcome == "connected"


def _ta(key="keys/ta.key", auth="SHA1", kd=None):
    return Side(key=key, auth=auth, key_direction=kd)


SCENARIOS: list[Scenario] = [
    Scenario(
        "udp-plain", "udp", 4, 1194, "none", Side(), Side(), "connected",
        "UDP session without tls-auth/tls-crypt: resets, TLS handshake, P_DATA_V2 keepalives.",
        "plain resets (14/26 bytes), TLS 1.3 in P_CONTROL_V1, P_ACK_V1, P_DATA_V2 pings"),
    Scenario(
        "udp-tls-auth-sha1", "udp", 4, 1194, "tls-auth", _ta(kd=0), _ta(kd=1), "connected",
        "UDP session with tls-auth, auth SHA1 (20-byte HMAC), key-direction 0 (server) / 1 (client).",
        "tls-auth with a 20-byte HMAC, replay packet-id and net_time in every control packet"),
    Scenario(
        "udp-tls-auth-sha256", "udp", 4, 1194, "tls-auth",
        _ta(auth="SHA256", kd=0), _ta(auth="SHA256", kd=1), "connected",
        "UDP session with tls-auth, auth SHA256 (32-byte HMAC), key-direction 0/1.",
        "tls-auth with a 32-byte HMAC (Wireshark needs tls_auth_hmac_size:32)"),
    Scenario(
        "udp-tls-auth-sha512", "udp", 4, 12345, "tls-auth",
        _ta(auth="SHA512", kd=0), _ta(auth="SHA512", kd=1), "connected",
        "UDP session with tls-auth, auth SHA512 (64-byte HMAC), key-direction 0/1, on non-standard port 12345.",
        "tls-auth with a 64-byte HMAC on a port Wireshark does not dissect by default"),
    Scenario(
        "udp-tls-auth-bidir", "udp", 4, 1194, "tls-auth", _ta(), _ta(), "connected",
        "UDP session with tls-auth SHA1 and no key-direction on either side (bidirectional key).",
        "tls-auth where both directions use the HMAC key at bytes 64.. of ta.key"),
    Scenario(
        "tcp-plain", "tcp", 4, 1194, "none", Side(), Side(), "connected",
        "TCP session without tls-auth/tls-crypt; every packet carries a 2-byte length prefix.",
        "TCP handshake and framing (2-byte length prefix; one packet per segment on loopback), P_DATA_V2 pings"),
    Scenario(
        "tcp-tls-auth", "tcp", 4, 1194, "tls-auth", _ta(kd=0), _ta(kd=1), "connected",
        "TCP session with tls-auth SHA1, key-direction 0/1.",
        "tls-auth SHA1 inside TCP framing"),
    Scenario(
        "udp-tls-crypt", "udp", 4, 1194, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc.key"), "connected",
        "UDP session with tls-crypt (control channel encrypted with AES-256-CTR, HMAC-SHA256 tag).",
        "tls-crypt resets (54/66 bytes), encrypted control channel"),
    Scenario(
        "tcp-tls-crypt", "tcp", 4, 443, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc.key"), "connected",
        "TCP session with tls-crypt on non-standard port 443.",
        "tls-crypt inside TCP framing on port 443"),
    Scenario(
        "udp-tls-crypt-v2", "udp", 4, 1194, "tls-crypt-v2",
        Side(key="keys/tcv2-server.key"), Side(key="keys/tcv2-client.key"), "connected",
        "UDP session with tls-crypt-v2 (client reset P_CONTROL_HARD_RESET_CLIENT_V3 carrying the wrapped client key).",
        "opcode 10 reset with WKc, early-negotiation TLV in the server reset, opcode 11 P_CONTROL_WKC_V1"),
    Scenario(
        "udp6-tls-auth", "udp", 6, 1194, "tls-auth",
        _ta(auth="SHA256", kd=0), _ta(auth="SHA256", kd=1), "connected",
        "UDP over IPv6 (::1) with tls-auth SHA256, key-direction 0/1.",
        "IPv6 transport, tls-auth with a 32-byte HMAC"),
    Scenario(
        "udp-reneg", "udp", 4, 1194, "tls-auth", _ta(kd=0), _ta(kd=1), "connected",
        f"UDP session with tls-auth SHA1 and a client-initiated renegotiation after {RENEG_SECONDS} s "
        "(key_id 1, dynamically tls-crypt wrapped).",
        "P_CONTROL_SOFT_RESET_V1 and key_id 1 control packets wrapped with the dynamic tls-crypt key, "
        "then P_DATA_V2 with key_id 1",
        renegotiation=True, client_extra=["--reneg-sec", str(RENEG_SECONDS)]),
    Scenario(
        "fail-tls-auth-wrong-key", "udp", 4, 1194, "tls-auth",
        _ta(kd=0), _ta(key="keys/ta-wrong.key", kd=1), "failed",
        "Client uses a different tls-auth key (ta-wrong.key); the server silently drops its resets.",
        "only client resets, one per attempt, each from a new source port with a new session id; server logs HMAC failure",
        server_log_expect=r"HMAC authentication failed"),
    Scenario(
        "fail-tls-auth-wrong-direction", "udp", 4, 1194, "tls-auth",
        _ta(kd=0), _ta(kd=0), "failed",
        "Client uses key-direction 0 like the server, so its HMAC is made with the wrong half of ta.key.",
        "only client resets; server logs HMAC failure",
        server_log_expect=r"HMAC authentication failed"),
    Scenario(
        "fail-tls-auth-digest-mismatch", "udp", 4, 1194, "tls-auth",
        _ta(auth="SHA256", kd=0), _ta(auth="SHA1", kd=1), "failed",
        "Server expects a SHA256 tls-auth HMAC, the client sends SHA1 (20 bytes); the server drops every packet.",
        "only client resets with a 20-byte HMAC; server expects 32",
        server_log_expect=r"HMAC authentication failed|cannot locate HMAC"),
    Scenario(
        "fail-tls-crypt-wrong-key", "udp", 4, 1194, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc-wrong.key"), "failed",
        "Client uses a different tls-crypt key (tc-wrong.key); the server cannot unwrap and drops its resets.",
        "only client tls-crypt resets; server logs tls-crypt unwrap error",
        server_log_expect=r"tls-crypt unwrap error"),
    Scenario(
        "fail-untrusted-cert", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "Client presents a certificate from a CA the server does not trust; TLS starts, then the server "
        "drops the session without a word (its log says it sent an unknown-CA alert, but none reaches the wire).",
        "resets and TLS handshake, then silence from the server (the client's last flight is never ACKed); "
        "the client gives up after --hand-window 2 and starts over with a new session id",
        client_cert="rogue-client",
        server_log_expect=r"certificate verify failed|VERIFY ERROR",
        client_extra=["--hand-window", "2"]),
    Scenario(
        "fail-untrusted-cert-tcp", "tcp", 4, 1194, "none", Side(), Side(), "failed",
        "Client presents a certificate from an untrusted CA over TCP; the server closes the connection "
        "(FIN) right after the client's certificate, again without a TLS alert on the wire.",
        "one TCP connection per second, each with resets, a TLS handshake and a server FIN",
        client_cert="rogue-client",
        server_log_expect=r"certificate verify failed|VERIFY ERROR"),
    Scenario(
        "udp-tls12", "udp", 4, 1194, "none", Side(), Side(), "connected",
        "UDP session like udp-plain, but the client allows at most TLS 1.2 (--tls-version-max 1.2), "
        "so the certificates cross the wire in clear.",
        "a TLS 1.2 handshake: Server Hello, Certificate, Server Key Exchange, Certificate Request, "
        "Server Hello Done, the client's Certificate, then encrypted Finished messages",
        client_extra=["--tls-version-max", "1.2"]),
]

BY_NAME = {s.name: s for s in SCENARIOS}


# --------------------------------------------------------------------------- key material

KEY_FILES = {
    "ca.crt": "test CA certificate (trusted by server and client)",
    "ca.key": "test CA private key (EC P-256), kept so more test certificates can be issued",
    "server.crt": "server certificate (CN ovpndiag-test-server, EKU serverAuth), signed by ca.crt",
    "server.key": "server private key (EC P-256)",
    "client.crt": "client certificate (CN ovpndiag-test-client, EKU clientAuth), signed by ca.crt",
    "client.key": "client private key (EC P-256)",
    "rogue-ca.crt": "a second, untrusted CA (the server does not know it)",
    "rogue-ca.key": "private key of the rogue CA",
    "rogue-client.crt": "client certificate signed by rogue-ca.crt (used by the fail-untrusted-cert captures)",
    "rogue-client.key": "private key of the rogue client certificate",
    "ta.key": "OpenVPN static key V1 used for tls-auth",
    "ta-wrong.key": "a different static key, for the wrong-tls-auth-key failure",
    "tc.key": "OpenVPN static key V1 used for tls-crypt",
    "tc-wrong.key": "a different static key, for the wrong-tls-crypt-key failure",
    "tcv2-server.key": "tls-crypt-v2 server key",
    "tcv2-client.key": "tls-crypt-v2 client key (Kc + WKc) wrapped with tcv2-server.key",
}

KEYS_README = """\
# TEST MATERIAL ONLY - DO NOT USE IN PRODUCTION

Every key and certificate in this folder is **publicly known**: it is committed to a public
repository so that ovpndiag's tests can be run against the bundled captures (`../*.pcap`).
Anyone can decrypt, forge or impersonate anything made with these files. Never use them, or
anything derived from them, for a real VPN.

They were generated by `captures/record.py` (EC P-256 certificates made with the Python
`cryptography` package; static keys made with `openvpn --genkey`). The captures correspond
to exactly these files: if you regenerate them (`record.py --new-keys --force`), re-record
every capture.

| file | what it is |
|---|---|
{rows}
"""


def _pem_write(path: Path, data: bytes, private: bool) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600 if private else 0o644)


def _make_pki() -> None:
    """Create the CA, server, client and rogue certificates that are missing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=365 * 30)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ovpndiag test material"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save_key(stem: str, key) -> None:
        _pem_write(KEYS / f"{stem}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), private=True)

    def load(stem: str):
        key = serialization.load_pem_private_key((KEYS / f"{stem}.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((KEYS / f"{stem}.crt").read_bytes())
        return key, cert

    def have(stem: str) -> bool:
        return (KEYS / f"{stem}.key").exists() and (KEYS / f"{stem}.crt").exists()

    def ca(stem: str, cn: str):
        if have(stem):
            return load(stem) + (False,)
        key = ec.generate_private_key(ec.SECP256R1())
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        save_key(stem, key)
        _pem_write(KEYS / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), False)
        print(f"  created keys/{stem}.crt, keys/{stem}.key")
        return key, cert, True

    def leaf(stem: str, cn: str, issuer, eku, force: bool) -> None:
        if have(stem) and not force:
            return
        ca_key, ca_cert = issuer
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(name(cn)).issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                             crl_sign=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        save_key(stem, key)
        _pem_write(KEYS / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), False)
        print(f"  created keys/{stem}.crt, keys/{stem}.key")

    ca_key, ca_cert, new_ca = ca("ca", "ovpndiag-test-ca")
    leaf("server", "ovpndiag-test-server", (ca_key, ca_cert), ExtendedKeyUsageOID.SERVER_AUTH, new_ca)
    leaf("client", "ovpndiag-test-client", (ca_key, ca_cert), ExtendedKeyUsageOID.CLIENT_AUTH, new_ca)
    r_key, r_cert, new_rogue = ca("rogue-ca", "ovpndiag-rogue-ca")
    leaf("rogue-client", "ovpndiag-rogue-client", (r_key, r_cert),
         ExtendedKeyUsageOID.CLIENT_AUTH, new_rogue)


def _genkey(*args: str) -> None:
    subprocess.run(["openvpn", "--genkey", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ensure_keys(new: bool) -> bool:
    """Create missing key material; with new=True replace all of it. Returns True if anything was created."""
    KEYS.mkdir(exist_ok=True)
    if new:
        for f in KEY_FILES:
            (KEYS / f).unlink(missing_ok=True)
    missing = [f for f in KEY_FILES if not (KEYS / f).exists()]
    if missing:
        print(f"creating key material in {KEYS}: {', '.join(missing)}")
        _make_pki()
        for f in ("ta.key", "ta-wrong.key", "tc.key", "tc-wrong.key"):
            if not (KEYS / f).exists():
                _genkey("secret", str(KEYS / f))
                print(f"  created keys/{f}")
        new_v2_server = not (KEYS / "tcv2-server.key").exists()
        if new_v2_server:
            _genkey("tls-crypt-v2-server", str(KEYS / "tcv2-server.key"))
            print("  created keys/tcv2-server.key")
        if new_v2_server or not (KEYS / "tcv2-client.key").exists():
            (KEYS / "tcv2-client.key").unlink(missing_ok=True)
            _genkey("tls-crypt-v2-client", str(KEYS / "tcv2-client.key"),
                    "--tls-crypt-v2", str(KEYS / "tcv2-server.key"))
            print("  created keys/tcv2-client.key")
        for f in KEY_FILES:
            if f.endswith(".key"):
                os.chmod(KEYS / f, 0o600)
    rows = "\n".join(f"| `{f}` | {d} |" for f, d in KEY_FILES.items())
    (KEYS / "README.md").write_text(KEYS_README.format(rows=rows))
    return bool(missing)


def key_fragments() -> list[str]:
    """Distinctive chunks of every secret file, to make sure no log leaks them."""
    frags = []
    for f in KEY_FILES:
        if not f.endswith(".key"):
            continue
        for line in (KEYS / f).read_text().splitlines():
            line = line.strip()
            if len(line) >= 24 and not line.startswith("-----") and not line.startswith("#"):
                frags.append(line[:24])
    return frags


# --------------------------------------------------------------------------- process handling

class Procs:
    """Processes started by this script; all of them are stopped in stop_all()."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, cwd=HERE, **kw)
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


# --------------------------------------------------------------------------- openvpn command lines

def wrap_args(side: Side, wrapping: str) -> list[str]:
    if wrapping == "tls-auth":
        args = ["--tls-auth", side.key]
        if side.key_direction is not None:
            args.append(str(side.key_direction))
        return args + ["--auth", side.auth]
    if wrapping == "tls-crypt":
        return ["--tls-crypt", side.key]
    if wrapping == "tls-crypt-v2":
        return ["--tls-crypt-v2", side.key]
    return []


def server_argv(sc: Scenario, idx: int) -> list[str]:
    proto = {("udp", 4): "udp4", ("udp", 6): "udp6",
             ("tcp", 4): "tcp4-server", ("tcp", 6): "tcp6-server"}[(sc.transport, sc.family)]
    return ["openvpn",
            "--server", f"10.201.{idx}.0", "255.255.255.0",
            "--topology", "subnet",
            "--local", "127.0.0.1" if sc.family == 4 else "::1",
            "--port", str(sc.port), "--proto", proto,
            "--dev", f"ovdiag-s{idx}", "--dev-type", "tun",
            "--ca", "keys/ca.crt", "--cert", "keys/server.crt", "--key", "keys/server.key",
            "--dh", "none",
            "--ping", "1",
            "--disable-dco",
            "--verb", "3",
            *wrap_args(sc.server, sc.wrapping),
            *sc.server_extra]


def client_argv(sc: Scenario, idx: int) -> list[str]:
    proto = {("udp", 4): "udp4", ("udp", 6): "udp6",
             ("tcp", 4): "tcp4-client", ("tcp", 6): "tcp6-client"}[(sc.transport, sc.family)]
    argv = ["openvpn",
            "--client",
            "--remote", "127.0.0.1" if sc.family == 4 else "::1", str(sc.port),
            "--proto", proto, "--nobind",
            "--dev", f"ovdiag-c{idx}", "--dev-type", "tun",
            "--ca", "keys/ca.crt",
            "--cert", f"keys/{sc.client_cert}.crt", "--key", f"keys/{sc.client_cert}.key",
            "--remote-cert-tls", "server",
            "--ping", "1",
            "--connect-retry", "1", "1",
            "--disable-dco",
            "--verb", "3",
            *wrap_args(sc.client, sc.wrapping),
            *sc.client_extra]
    if sc.outcome == "failed":
        # Give up on an unanswered attempt after 1 s so several attempts (with fresh
        # session ids) fit in the short capture.
        argv += ["--server-poll-timeout", "1"]
    return argv


# --------------------------------------------------------------------------- pcap reading

def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian, frac = "<", 1e-6
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian, frac = ">", 1e-6
    elif magic == b"\x4d\x3c\xb2\xa1":
        endian, frac = "<", 1e-9
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: unexpected linktype {linktype}")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, sub, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append((sec + sub * frac, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return out


def openvpn_packets(path: Path, sc: Scenario) -> list[tuple[str, bytes]]:
    """Return [(direction, openvpn packet)] with direction 'c2s' or 's2c'.

    Just enough parsing for record.py's own sanity check: Ethernet, IPv4/IPv6, UDP/TCP,
    and for TCP the 2-byte length framing over the in-order byte stream.
    """
    proto_num = 17 if sc.transport == "udp" else 6
    streams = {"c2s": b"", "s2c": b""}
    pkts = []
    for _ts, frame in read_pcap(path):
        ethertype = struct.unpack("!H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            proto, l4 = ip[9], ip[ihl:struct.unpack("!H", ip[2:4])[0]]
        elif ethertype == 0x86DD:
            proto, l4 = ip[6], ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
        else:
            continue
        if proto != proto_num:
            continue
        sport, dport = struct.unpack("!HH", l4[:4])
        if dport == sc.port:
            direction = "c2s"
        elif sport == sc.port:
            direction = "s2c"
        else:
            continue
        if proto == 17:
            pkts.append((direction, l4[8:]))
        else:
            streams[direction] += l4[(l4[12] >> 4) * 4:]
            buf = streams[direction]
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                pkts.append((direction, buf[2:2 + n]))
                buf = buf[2 + n:]
            streams[direction] = buf
    return pkts


def check_capture(path: Path, sc: Scenario) -> list[str]:
    """Minimal wire-level expectations for a scenario. Returns a list of problems."""
    pkts = openvpn_packets(path, sc)
    problems = []
    if not pkts:
        return ["no OpenVPN packets captured"]
    ops = [(d, p[0] >> 3, p[0] & 7) for d, p in pkts]
    first_op = 10 if sc.wrapping == "tls-crypt-v2" else 7
    if ops[0][:2] != ("c2s", first_op):
        problems.append(f"first packet is {ops[0]}, expected client opcode {first_op}")
    server_reset = any(d == "s2c" and op == 8 for d, op, _ in ops)
    has_data = any(op == 9 for _, op, _ in ops)
    if sc.outcome == "connected":
        if len(ops) < 2 or ops[1][:2] != ("s2c", 8):
            problems.append(f"second packet is {ops[1] if len(ops) > 1 else None}, expected server opcode 8")
        for op in (4, 5, 9):
            if not any(o == op for _, o, _ in ops):
                problems.append(f"no opcode {op} packet")
    else:
        if has_data:
            problems.append("data packets in a failed handshake")
        if sc.client_cert == "client" and server_reset:
            problems.append("server answered although the client's wrapping is wrong")
        if sc.client_cert != "client" and not server_reset:
            problems.append("server never answered (TLS should start and then fail)")
    if sc.renegotiation:
        if not any(op == 3 and kid == 1 for _, op, kid in ops):
            problems.append("no P_CONTROL_SOFT_RESET_V1 with key_id 1")
        if not any(op == 9 and kid == 1 for _, op, kid in ops):
            problems.append("no P_DATA_V2 with key_id 1")
    elif any(kid != 0 for _, _, kid in ops):
        problems.append("unexpected key_id != 0")
    return problems


# --------------------------------------------------------------------------- recording

def record(sc: Scenario, idx: int, procs: Procs) -> None:
    pcap_tmp = HERE / f"{sc.name}.pcap.tmp"
    slog_tmp = LOGS / f"{sc.name}.server.log.tmp"
    clog_tmp = LOGS / f"{sc.name}.client.log.tmp"
    for f in (pcap_tmp, slog_tmp, clog_tmp):
        f.unlink(missing_ok=True)

    dump = procs.start("tcpdump", ["tcpdump", "-i", "lo", "-U", "-s", "0", "-Z", "root",
                                   "-w", str(pcap_tmp), f"port {sc.port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = dump.stderr.readline()
    if "listening on" not in line:
        raise RuntimeError(f"tcpdump did not start: {line.strip()}")
    time.sleep(0.3)

    with open(slog_tmp, "w") as slog, open(clog_tmp, "w") as clog:
        server = procs.start("server", server_argv(sc, idx), stdout=slog,
                             stderr=subprocess.STDOUT)
        if not wait_for(slog_tmp, INIT_DONE, 10, server):
            raise RuntimeError("server did not start; see " + str(slog_tmp))
        client = procs.start("client", client_argv(sc, idx), stdout=clog,
                             stderr=subprocess.STDOUT)
        if sc.outcome == "connected":
            if not wait_for(clog_tmp, INIT_DONE, CONNECT_TIMEOUT, client):
                raise RuntimeError("client did not connect; see " + str(clog_tmp))
            if sc.renegotiation:
                # The first TLS session logs one "Control Channel:" line; the renegotiated
                # one logs a second. Then wait until data flows with the new key.
                if not wait_for(clog_tmp, r"Control Channel: TLS", RENEG_TIMEOUT, client, count=2):
                    raise RuntimeError("no renegotiation seen; see " + str(clog_tmp))
                time.sleep(2.0)
            else:
                time.sleep(KEEPALIVE_SECONDS)
        else:
            time.sleep(FAIL_SECONDS)
        procs.stop(client)
        time.sleep(0.3)
        procs.stop(server)
    time.sleep(0.3)
    procs.stop(dump)
    dump.stderr.close()

    # Did the scenario do what it should?
    clog_text = clog_tmp.read_text(errors="replace")
    slog_text = slog_tmp.read_text(errors="replace")
    connected = INIT_DONE in clog_text
    if sc.outcome == "connected" and not connected:
        raise RuntimeError("expected a connection")
    if sc.outcome == "failed":
        if connected:
            raise RuntimeError("expected failure, but the client connected")
        if sc.server_log_expect and not re.search(sc.server_log_expect, slog_text):
            raise RuntimeError(f"server log lacks /{sc.server_log_expect}/")
    for frag in key_fragments():
        if frag in clog_text or frag in slog_text:
            raise RuntimeError("key material found in a log")
    problems = check_capture(pcap_tmp, sc)
    if problems:
        raise RuntimeError("capture check failed: " + "; ".join(problems))

    os.replace(pcap_tmp, HERE / f"{sc.name}.pcap")
    os.replace(slog_tmp, LOGS / f"{sc.name}.server.log")
    os.replace(clog_tmp, LOGS / f"{sc.name}.client.log")
    os.chmod(HERE / f"{sc.name}.pcap", 0o644)


# --------------------------------------------------------------------------- manifest / README

def manifest_entry(sc: Scenario) -> dict:
    return {
        "file": f"{sc.name}.pcap",
        "transport": sc.transport,
        "family": sc.family,
        "port": sc.port,
        "wrapping": sc.wrapping,
        "auth": sc.server.auth,
        "key": sc.server.key,
        "server_key_direction": sc.server.key_direction,
        "client": {"key": sc.client.key, "auth": sc.client.auth,
                   "key_direction": sc.client.key_direction},
        "outcome": sc.outcome,
        "renegotiation": sc.renegotiation,
        "data_channel": sc.data_channel,
        "description": sc.description,
    }


README_HEAD = """\
# captures/ - real OpenVPN 2.6 traffic for ovpndiag's tests

Every `*.pcap` here was recorded on loopback (`tcpdump -i lo -s 0 -U`, classic pcap, linktype
Ethernet) between a real OpenVPN server and a real OpenVPN client - two separate `openvpn`
processes with their own tun devices, talking over 127.0.0.1 or ::1 - by `record.py`.
Recorded with: `{version}`.

* `manifest.json` - one object per capture (transport, address family, port, wrapping, the
  tls-auth digest / key file / key-direction of the server and, under `client`, of the client,
  expected outcome, renegotiation, data channel). Key paths are relative to this folder.
* `logs/NAME.server.log`, `logs/NAME.client.log` - both peers' `--verb 3` logs for each capture.
  Failure reasons ("packet HMAC authentication failed", "cannot locate HMAC in incoming
  packet", "tls-crypt unwrap error", "VERIFY ERROR") are only visible there.
* `keys/` - the **test-only, publicly known** PKI and static keys the captures were made with
  (see `keys/README.md`). Never use them for anything real.
* `record.py` - the script that made all of this.

Common settings: server `--server 10.201.N.0 255.255.255.0 --topology subnet --dh none`,
EC P-256 certificates, default `data-ciphers` (AES-256-GCM is negotiated), `--ping 1` on both
sides, `--disable-dco`; client `--client --nobind --remote-cert-tls server --connect-retry 1 1`.
Failing clients also use `--server-poll-timeout 1` (`--hand-window 2` for the untrusted
certificate over UDP) so several attempts fit into the ~{fail:g} s capture. Connected captures
run ~{keep:g} s after "Initialization Sequence Completed".

## Re-recording

Needs root, `openvpn` (2.6) and `tcpdump`:

    sudo python3 captures/record.py --list            # scenario names
    sudo python3 captures/record.py [--force] [NAME...]

Existing captures are kept unless `--force` is given; missing keys are created, existing keys
are never replaced unless `--new-keys` is given (then every capture must be re-recorded).
Each recording is checked (client log outcome, server log failure reason, first packets,
opcodes, key ids, no key material in the logs) before it replaces the old files. Afterwards
`manifest.json` and this README are regenerated (`--docs-only` does just that). Timestamps,
session ids, ports and ciphertexts differ on every run.

## Wireshark / tshark

Wireshark 4.0 dissects OpenVPN on port 1194 only (use "Decode As" / `-d` elsewhere). It guesses
whether tls-auth is present, but the HMAC size is one global preference (default 20), so the
SHA256/SHA512 captures need it set, and tls-crypt must be switched on, e.g.

    tshark -r udp-tls-auth-sha512.pcap -d udp.port==12345,openvpn \\
        -o openvpn.tls_auth_detection_override:TRUE -o openvpn.tls_auth:TRUE \\
        -o openvpn.tls_auth_hmac_size:64
    tshark -r tcp-tls-crypt.pcap -d tcp.port==443,openvpn -o openvpn.tls_crypt:TRUE

## Things worth knowing about these captures

* Wrong tls-auth key, wrong key-direction, digest mismatch and wrong tls-crypt key all look the
  same on the wire: client resets only, no answer at all, a new source port and session id per
  attempt. The digest mismatch (server SHA256, client SHA1) is logged by the server as "cannot
  locate HMAC in incoming packet" (the 42-byte reset is too short for a 32-byte HMAC), the
  others as "packet HMAC authentication failed" / "tls-crypt unwrap error".
* Untrusted client certificate: the server logs "Sent fatal SSL alert: unknown CA", but the
  alert never appears on the wire - over UDP the server just stops answering (it does not even
  ACK the client's certificate flight), over TCP it closes the connection with a FIN.
* `udp-reneg`: every key_id 1 control packet (soft reset, control, ACK) is wrapped with the
  dynamic tls-crypt key (`protocol-flags ... dyn-tls-crypt`), even though the session started
  with tls-auth; Wireshark, set up for tls-auth, reports those packets as malformed. OpenVPN
  2.6 accepts any `--reneg-sec` down to 1 s; 3 s is used here.
* TCP: on loopback each OpenVPN packet went out in its own segment (2-byte length prefix +
  packet); these captures contain no segment with several packets or a packet split across
  segments.

## Captures

| file | transport/port | wrapping | outcome | packets | what it shows |
|---|---|---|---|---|---|
"""


def openvpn_version() -> str:
    try:
        out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown"


def write_docs() -> None:
    present = [sc for sc in SCENARIOS if (HERE / f"{sc.name}.pcap").exists()]
    MANIFEST.write_text(json.dumps([manifest_entry(sc) for sc in present], indent=2) + "\n")
    rows = []
    for sc in present:
        n = len(read_pcap(HERE / f"{sc.name}.pcap"))
        tp = f"{sc.transport}{'6' if sc.family == 6 else ''}/{sc.port}"
        wrapping = sc.wrapping
        if sc.wrapping == "tls-auth":
            kd = lambda s: "none" if s.key_direction is None else str(s.key_direction)
            if sc.server.auth == sc.client.auth and sc.server.key == sc.client.key:
                wrapping += f" {sc.server.auth}, key-dir {kd(sc.server)}/{kd(sc.client)}"
            else:
                wrapping += (f" server {sc.server.auth} {sc.server.key} dir {kd(sc.server)}, "
                             f"client {sc.client.auth} {sc.client.key} dir {kd(sc.client)}")
        elif sc.server.key != sc.client.key and sc.wrapping == "tls-crypt":
            wrapping += f" (client {sc.client.key})"
        rows.append(f"| `{sc.name}.pcap` | {tp} | {wrapping} | {sc.outcome} | {n} | "
                    f"{sc.description} Shows {sc.shows}. |")
    README.write_text(README_HEAD.format(version=openvpn_version(), fail=FAIL_SECONDS,
                                         keep=KEEPALIVE_SECONDS) + "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="scenarios to record (default: all)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--force", action="store_true", help="overwrite existing captures")
    ap.add_argument("--new-keys", action="store_true",
                    help="replace all key material (invalidates every existing capture)")
    ap.add_argument("--docs-only", action="store_true",
                    help="only regenerate manifest.json and README.md")
    args = ap.parse_args()

    if args.list:
        for sc in SCENARIOS:
            where = f"{sc.transport}{'6' if sc.family == 6 else ''}/{sc.port}"
            print(f"{sc.name:32} {where:11} {sc.wrapping:13} {sc.outcome}")
        return 0
    if args.docs_only:
        write_docs()
        return 0

    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    chosen = [BY_NAME[n] for n in args.names] if args.names else SCENARIOS
    if os.geteuid() != 0:
        ap.error("needs root (tun devices, packet capture)")
    for tool in ("openvpn", "tcpdump"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found")
    existing = [sc.name for sc in chosen if (HERE / f"{sc.name}.pcap").exists()]
    if existing and not args.force:
        ap.error(f"captures exist, use --force to overwrite: {', '.join(existing)}")
    if args.new_keys:
        stale = [sc.name for sc in SCENARIOS
                 if (HERE / f"{sc.name}.pcap").exists() and sc not in chosen]
        if stale:
            ap.error("--new-keys makes these captures stale; record them too: " + ", ".join(stale))

    ensure_keys(args.new_keys)
    LOGS.mkdir(exist_ok=True)
    print(openvpn_version())

    procs = Procs()
    failures = []
    try:
        for sc in chosen:
            idx = SCENARIOS.index(sc) + 1
            print(f"[{sc.name}] recording ...", flush=True)
            try:
                record(sc, idx, procs)
            except Exception as e:  # report, clean up, continue with the next scenario
                procs.stop_all()
                failures.append(sc.name)
                print(f"[{sc.name}] ERROR: {e}", file=sys.stderr)
                continue
            n = len(read_pcap(HERE / f"{sc.name}.pcap"))
            print(f"[{sc.name}] ok: {n} packets, {(HERE / f'{sc.name}.pcap').stat().st_size} bytes")
    finally:
        procs.stop_all()
        write_docs()
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
