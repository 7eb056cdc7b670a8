#!/usr/bin/env python3
"""Record the real OpenVPN 2.6 loopback captures bundled with ovpndiag.

For every scenario this script starts ``tcpdump -i lo`` on the scenario's port, a real
OpenVPN 2.6 server and a real OpenVPN 2.6 client (two separate ``openvpn`` processes with
their own tun devices, talking over 127.0.0.1 or ::1 only), waits for the expected outcome,
lets ``--ping 1`` keepalives flow for a few seconds and stops everything again.

Some scenarios vary where and how the same kind of session is captured, for the capture
reader: ``tcpdump -i any`` (Linux cooked headers, v2 or with ``-y LINUX_SLL`` v1), ``dumpcap``
(pcapng), or peers in two private network namespaces joined by a veth pair - with a small MTU
(IP fragments), with VLAN tags on the link, or with the captured session running inside an
outer OpenVPN tunnel and captured on its tun device (raw IP). Link types Linux cannot record
(BSD loopback) are derived from real captures by ``derive.py``. It writes

* ``captures/NAME.pcap``                      - the capture (classic pcap; ``.pcapng`` from dumpcap)
* ``captures/logs/NAME.server.log``           - the server's verb-3 log
* ``captures/logs/NAME.client.log``           - the client's verb-3 log
* ``captures/manifest.json``                  - machine-readable description of every capture
* ``captures/README.md``                      - human-readable description and table

and creates the throw-away test PKI and static keys in ``captures/keys/`` if they are
missing (existing keys are never replaced unless ``--new-keys`` is given, because the
captures were made with them).

It needs root (tun devices, packet capture, binding port 443, network namespaces) plus the
``openvpn``, ``tcpdump``, ``ip`` and ``ping`` binaries (``dumpcap`` for pcapng); the Python side
uses only the standard library and ``cryptography``.

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
RELAY_PORT = 11194          # where relay_udp() listens for the floating client (not captured)

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
    # Where the peers talk and how the capture is taken (see Net):
    net: str = "lo"                     # "lo" | "veth" | "vlan" | "nested"
    capture_iface: str = "lo"           # "lo" | "any" | "link" (the veth) | "tun" (outer tunnel)
    capture_args: list[str] = field(default_factory=list)   # extra tcpdump options
    capture_tool: str = "tcpdump"       # "tcpdump" (pcap) | "dumpcap" (pcapng)
    mtu: int | None = None              # veth MTU
    vlan: list[tuple[int, int]] = field(default_factory=list)  # (TPID, VLAN id), outermost first
    tunnel_ping: int = 0                # ping size through the tunnel once connected (0: none)
    expect_fragments: bool = False
    # Captures as users make them (group "real-world"; see README "Real-world captures"):
    group: str = "basic"                # "basic": one clean session or failure from its start | "real-world"
    kind: str = "tls"                   # "tls": server + client | "static-key": p2p --secret pair |
                                        # "probe": server + `ovpndiag probe --try-keys`
    capture_start: str = "handshake"    # "handshake": before the server starts | "mid-session": once connected
    float_client: bool = False          # client talks through relay_udp(), which changes its source port mid-session
    flood: int = 0                      # ping -f -c FLOOD -s 0 through the tunnel (capture size: small pings)
    min_packets: int = 0                # the capture must hold more OpenVPN packets than this

    @property
    def data_channel(self) -> bool:
        return self.outcome == "connected"

    @property
    def file(self) -> str:
        return f"{self.name}.pcapng" if self.capture_tool == "dumpcap" else f"{self.name}.pcap"

    @property
    def linktype(self) -> int:
        """What the capture must turn out to be."""
        if self.capture_iface == "any":
            return 113 if "LINUX_SLL" in self.capture_args else 276
        return 101 if self.capture_iface == "tun" else 1

    @property
    def captured(self) -> str:
        """How the capture was taken, for the README and manifest."""
        if self.capture_tool == "dumpcap":
            how = f"dumpcap -i {self.capture_iface} (pcapng)"
        else:
            how = " ".join(["tcpdump -i", self.capture_iface, *self.capture_args])
        if self.net == "veth":
            how = f"{how.replace('-i link', '-i veth')}, veth MTU {self.mtu} between namespaces"
        elif self.net == "vlan":
            tags = " + ".join(("802.1ad" if tpid == 0x88A8 else "802.1Q") + f" {vid}" for tpid, vid in self.vlan)
            how = f"{how.replace('-i link', '-i veth')}, {tags} tagged veth between namespaces"
        elif self.net == "nested":
            how = f"{how} of an outer OpenVPN tunnel between namespaces"
        return how


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
    # ---- the same kinds of session, captured in other link types and formats
    Scenario(
        "udp-any-sll2", "udp", 4, 1194, "tls-auth",
        _ta(auth="SHA256", kd=0), _ta(auth="SHA256", kd=1), "connected",
        "UDP session with tls-auth SHA256 on loopback, captured with tcpdump -i any: Linux cooked "
        "capture v2 headers (link type 276) instead of Ethernet.",
        "SLL2 frames (20-byte header with interface index and packet type)",
        capture_iface="any", capture_args=["--immediate-mode"]),
    Scenario(
        "udp-any-sll", "udp", 4, 1194, "none", Side(), Side(), "connected",
        "UDP session without wrapping on loopback, captured with tcpdump -i any -y LINUX_SLL: "
        "Linux cooked capture v1 headers (link type 113).",
        "SLL frames (16-byte header)",
        capture_iface="any", capture_args=["-y", "LINUX_SLL", "--immediate-mode"]),
    Scenario(
        "tcp-pcapng", "tcp", 4, 1194, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc.key"), "connected",
        "TCP session with tls-crypt on loopback, recorded by dumpcap: pcapng (section header, "
        "interface description with if_tsresol, enhanced packet blocks, interface statistics).",
        "pcapng blocks around an ordinary TCP session",
        capture_tool="dumpcap"),
    Scenario(
        "udp-vlan", "udp", 4, 1194, "tls-auth", _ta(kd=0), _ta(kd=1), "connected",
        "UDP session with tls-auth SHA1 between two network namespaces whose link carries "
        "802.1Q VLAN 100, captured on the veth.",
        "802.1Q-tagged Ethernet frames (and tagged ARP)",
        net="vlan", capture_iface="link", vlan=[(0x8100, 100)], capture_args=["--immediate-mode"]),
    Scenario(
        "tcp-qinq", "tcp", 4, 1194, "none", Side(), Side(), "connected",
        "TCP session without wrapping between two network namespaces whose link carries stacked "
        "VLAN tags (802.1ad S-tag 100 outside an 802.1Q C-tag 200), captured on the veth.",
        "two stacked VLAN tags (QinQ) in front of IPv4/TCP",
        net="vlan", capture_iface="link", vlan=[(0x88A8, 100), (0x8100, 200)],
        capture_args=["--immediate-mode"]),
    Scenario(
        "udp-frag", "udp", 4, 1194, "tls-auth",
        _ta(auth="SHA512", kd=0), _ta(auth="SHA512", kd=1), "connected",
        "UDP session with tls-auth SHA512 between two namespaces over a veth with MTU 576 and "
        "--mtu-disc no, so the kernel fragments the ~1250-byte control packets (the certificate "
        "flight) and the data packets of 1200-byte pings through the tunnel.",
        "IPv4 fragments (three per control packet), reassembled datagrams",
        net="veth", capture_iface="link", mtu=576, tunnel_ping=1200, expect_fragments=True,
        capture_args=["--immediate-mode"],
        server_extra=["--mtu-disc", "no"], client_extra=["--mtu-disc", "no"]),
    Scenario(
        "udp6-frag", "udp", 6, 1194, "none", Side(), Side(), "connected",
        "UDP over IPv6 between two namespaces over a veth with the IPv6 minimum MTU (1280) and "
        "--mtu-disc no; control packets (1250 bytes) still fit, the data packets of 1400-byte "
        "pings through the tunnel are fragmented (IPv6 fragment extension header).",
        "IPv6 fragments of data packets",
        net="veth", capture_iface="link", mtu=1280, tunnel_ping=1400, expect_fragments=True,
        capture_args=["--immediate-mode"],
        server_extra=["--mtu-disc", "no"], client_extra=["--mtu-disc", "no"]),
    Scenario(
        "udp-tun-raw", "udp", 4, 1195, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc.key"), "connected",
        "UDP session with tls-crypt on port 1195 running inside an outer OpenVPN tunnel between two "
        "namespaces, captured on the outer server's tun device: raw IP frames (link type 101), "
        "as a capture taken on a VPN server's tun interface looks.",
        "raw IPv4 packets without any link-layer header",
        net="nested", capture_iface="tun", capture_args=["--immediate-mode"]),
    # ---- real-world: captured the way users capture (tcpdump started on a running server,
    # a client behind a NAT that rebinds, a flood, unanswered resets, a --try-keys run, static key)
    Scenario(
        "udp-midsession-reneg", "udp", 4, 1194, "tls-auth", _ta(kd=0), _ta(kd=1), "connected",
        "UDP session with tls-auth SHA1 whose capture starts after \"Initialization Sequence Completed\" "
        f"(tcpdump started on the running tunnel): pings through the tunnel, a client-initiated "
        f"renegotiation after {RENEG_SECONDS} s, pings again.",
        "no resets: P_DATA_V2 with key_id 0, then P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1 and P_ACK_V1 with "
        "key_id 1 under dynamic tls-crypt, then P_DATA_V2 with key_id 1",
        renegotiation=True, client_extra=["--reneg-sec", str(RENEG_SECONDS)],
        group="real-world", capture_start="mid-session", tunnel_ping=56, net="veth", capture_iface="link", mtu=1500, capture_args=["--immediate-mode"]),
    Scenario(
        "tcp-midsession-reneg", "tcp", 4, 443, "tls-crypt",
        Side(key="keys/tc.key"), Side(key="keys/tc.key"), "connected",
        "TCP session with tls-crypt on port 443 captured from the middle of the stream (tcpdump started "
        f"on the running tunnel), with pings and a client-initiated renegotiation after {RENEG_SECONDS} s.",
        "a TCP stream without its SYN and without resets, 2-byte framing from the first segment on, "
        "key_id 0 data, the key_id 1 renegotiation (dynamic tls-crypt), key_id 1 data",
        renegotiation=True, client_extra=["--reneg-sec", str(RENEG_SECONDS)],
        group="real-world", capture_start="mid-session", tunnel_ping=56, net="veth", capture_iface="link", mtu=1500, capture_args=["--immediate-mode"]),
    Scenario(
        "udp-float", "udp", 4, 1194, "none", Side(), Side(), "connected",
        "UDP session without wrapping whose client floats: it talks through a small UDP relay in "
        "record.py (a NAT) that, mid-session, sends from a new source port; the 2.6 server recognises "
        "the client by its peer-id and logs (at verb 4) \"peer 0 (ovpndiag-test-client) floated from 10.77.N.2:A to [AF_INET]10.77.N.2:B\".",
        "one session (same session ids, same peer-id) from two client ports: P_DATA_V2 from the new "
        "port, the server answering there",
        server_extra=["--verb", "4"],   # the float is logged at verb 4
        group="real-world", float_client=True, tunnel_ping=56, net="veth", capture_iface="link", mtu=1500, capture_args=["--immediate-mode"],
        server_log_expect=r"floated from \S+:\d+ to \S+:\d+"),
    Scenario(
        "udp-midsession-flood", "udp", 4, 1194, "tls-auth",
        _ta(auth="SHA256", kd=0), _ta(auth="SHA256", kd=1), "connected",
        "UDP session with tls-auth SHA256 captured mid-session during a ping flood through the tunnel "
        "(ping -f -s 0): a long capture of small data packets, all kept by tcpdump (0 dropped).",
        "more than 25,000 P_DATA_V2 packets of one session and no control packet before them",
        group="real-world", capture_start="mid-session", flood=13500, min_packets=25000,
        net="veth", capture_iface="link", mtu=1500, capture_args=["-B", "32768"]),   # 32 MB: no drops
    Scenario(
        "udp-unanswered-4444", "udp", 4, 4444, "tls-auth",
        _ta(kd=0), _ta(key="keys/ta-wrong.key", kd=1), "failed",
        "Client with a wrong tls-auth key (ta-wrong.key) against a server on non-standard port 4444: "
        "the server drops every reset without a word.",
        "only client resets, never answered, each attempt from a new source port with a new session id, "
        "on a port no tool dissects by default; server logs HMAC failure",
        server_log_expect=r"HMAC authentication failed", group="real-world"),
    Scenario(
        "udp-try-keys", "udp", 4, 2194, "tls-auth",
        _ta(auth="SHA512", kd=0), Side(key="keys/ta.key"), "answered",
        "`ovpndiag probe --try-keys --tls-auth keys/ta.key` against a server with tls-auth SHA512 "
        "(key-direction 0) on port 2194: one UDP socket tries every key direction, digest and "
        "wrapping; the server answers only the SHA512 key-direction 1 resets. The probe's output is "
        "logs/udp-try-keys.client.log.",
        "many client resets from one source port with different session ids and HMAC sizes, "
        "server resets answering only the right ones",
        kind="probe", group="real-world"),
    Scenario(
        "udp-static-key", "udp", 4, 1194, "static-key",
        Side(key="keys/static.key", auth="SHA1", key_direction=0),
        Side(key="keys/static.key", auth="SHA1", key_direction=1), "connected",
        "Point-to-point static-key tunnel (`--secret keys/static.key 0/1 --cipher AES-256-CBC`, "
        "deprecated in 2.6 and logged so): no TLS and no control channel, pings through the tunnel.",
        "static-key data packets only (HMAC-SHA1 (20 bytes), IV (16), AES-256-CBC ciphertext; no opcode byte): "
        "their first bytes are random, so read as TLS-mode OpenVPN they give made-up opcodes",
        kind="static-key", group="real-world", tunnel_ping=56, net="veth", capture_iface="link", mtu=1500, capture_args=["--immediate-mode"]),
]

BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Derived:
    """A capture re-encapsulated from a real one into a link type Linux cannot record."""
    name: str
    source: str                         # scenario whose capture is converted
    linktype: int
    big_endian: bool
    how: str                            # for the README and manifest

    @property
    def file(self) -> str:
        return f"{self.name}.pcap"


DERIVED: list[Derived] = [
    Derived("udp6-null", "udp6-tls-auth", 0, False,
            "udp6-tls-auth.pcap with each Ethernet header replaced by BSD loopback's 4-byte address "
            "family in host byte order (DLT_NULL, AF_INET6 = 30 as macOS tcpdump -i lo0 writes)"),
    Derived("tcp-loop", "tcp-tls-auth", 108, True,
            "tcp-tls-auth.pcap with each Ethernet header replaced by OpenBSD loopback's address family "
            "in network byte order (DLT_LOOP, AF_INET = 2), written as a big-endian pcap file"),
]
DERIVED_BY_NAME = {d.name: d for d in DERIVED}


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
    "static.key": "OpenVPN static key V1 used for the point-to-point static-key (--secret) capture",
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
        for f in ("ta.key", "ta-wrong.key", "tc.key", "tc-wrong.key", "static.key"):
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


def server_argv(sc: Scenario, idx: int, local: str | None = None, subnet: str | None = None,
                dev: str | None = None) -> list[str]:
    proto = {("udp", 4): "udp4", ("udp", 6): "udp6",
             ("tcp", 4): "tcp4-server", ("tcp", 6): "tcp6-server"}[(sc.transport, sc.family)]
    return ["openvpn",
            "--server", subnet or f"10.201.{idx}.0", "255.255.255.0",
            "--topology", "subnet",
            "--local", local or ("127.0.0.1" if sc.family == 4 else "::1"),
            "--port", str(sc.port), "--proto", proto,
            "--dev", dev or f"ovdiag-s{idx}", "--dev-type", "tun",
            "--ca", "keys/ca.crt", "--cert", "keys/server.crt", "--key", "keys/server.key",
            "--dh", "none",
            "--ping", "1",
            "--disable-dco",
            "--verb", "3",
            *wrap_args(sc.server, sc.wrapping),
            *sc.server_extra]


def client_argv(sc: Scenario, idx: int, remote: str | None = None, dev: str | None = None,
                port: int | None = None) -> list[str]:
    proto = {("udp", 4): "udp4", ("udp", 6): "udp6",
             ("tcp", 4): "tcp4-client", ("tcp", 6): "tcp6-client"}[(sc.transport, sc.family)]
    argv = ["openvpn",
            "--client",
            "--remote", remote or ("127.0.0.1" if sc.family == 4 else "::1"), str(port or sc.port),
            "--proto", proto, "--nobind",
            "--dev", dev or f"ovdiag-c{idx}", "--dev-type", "tun",
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


def static_key_argv(sc: Scenario, idx: int, role: str, server_addr: str) -> list[str]:
    """A point-to-point static-key peer (`--secret`, no TLS): the "server" listens on the
    scenario's port and learns its peer from the first authenticated packet."""
    side = sc.server if role == "server" else sc.client
    mine, theirs = (f"10.203.{idx}.1", f"10.203.{idx}.2") if role == "server" else \
        (f"10.203.{idx}.2", f"10.203.{idx}.1")
    argv = ["openvpn",
            "--dev", f"ovdiag-{role[0]}{idx}", "--dev-type", "tun",
            "--ifconfig", mine, theirs,
            "--secret", side.key, str(side.key_direction),
            "--cipher", "AES-256-CBC", "--auth", side.auth,
            "--proto", "udp4",
            "--ping", "1",
            "--disable-dco",
            "--verb", "3"]
    if role == "server":
        return argv + ["--local", server_addr, "--lport", str(sc.port)]
    return argv + ["--remote", server_addr, str(sc.port), "--nobind"]


def run_probe(sc: Scenario, log) -> None:
    """ovpndiag's own probe, from this checkout, trying every setting against the server."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    argv = [sys.executable, "-m", "ovpndiag", "probe", "127.0.0.1", "-p", str(sc.port),
            "--tls-auth", sc.client.key, "--try-keys"]
    log.write("$ ovpndiag " + " ".join(argv[3:]) + "\n")
    log.flush()
    subprocess.run(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)


def tunnel_ping(sc: Scenario, net: "Net", target: str) -> None:
    """A few pings through the tunnel (data-channel packets); `tunnel_ping` is their size."""
    if not sc.tunnel_ping:
        return
    ping = subprocess.run(net.run(net.client_ns, [
        "ping", "-c", "3", "-i", "0.3", "-W", "2", "-s", str(sc.tunnel_ping), target]),
        capture_output=True, text=True)
    if ping.returncode != 0:
        raise RuntimeError("pings through the tunnel failed: " + ping.stdout[-200:])


# --------------------------------------------------------------------------- namespaces, links, VLAN relay

def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Net:
    """Where a scenario's peers talk and where the capture is taken.

    "lo": both peers on loopback in this namespace (the original captures). Otherwise the
    server and the client each get a private network namespace, joined by a veth pair:
    "veth" with the scenario's MTU and addresses 10.77.N.1/.2 (fd77:N::1/2 for IPv6);
    "vlan" with the addresses on TAP devices whose frames vlan_relay() carries over the
    veth with the scenario's VLAN tags (this kernel has no 802.1Q devices and no tc
    actions, so a userspace relay plays the VLAN-aware switch ports; the frames on the
    veth are really tagged); "nested" with an outer OpenVPN tunnel over the veth, through
    which the captured session runs. No traffic ever leaves these namespaces.
    """

    def __init__(self, sc: Scenario, idx: int):
        self.sc, self.idx = sc, idx
        self.relay: subprocess.Popen | None = None
        if sc.net == "lo":
            self.server_ns = self.client_ns = None
            self.server_addr = "127.0.0.1" if sc.family == 4 else "::1"
            self.capture_iface = sc.capture_iface
            return
        self.server_ns, self.client_ns = f"ovdiag{idx}s", f"ovdiag{idx}c"
        self.link = (f"ovd{idx}s", f"ovd{idx}c")            # veth ends in server / client ns
        self.taps = (f"ovd{idx}st", f"ovd{idx}ct")
        if sc.net == "nested":
            self.link_addr = f"10.77.{idx}.1"                # the outer tunnel's endpoint
            self.server_addr = f"10.201.{idx}.1"             # the outer server's tun address
            self.capture_iface = f"ovdiag-s{idx}"            # the outer server's tun device
        else:
            self.server_addr = f"10.77.{idx}.1" if sc.family == 4 else f"fd77:{idx}::1"
            self.capture_iface = self.link[0]

    def run(self, ns: str | None, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else argv

    def up(self, procs: Procs) -> None:
        sc, idx = self.sc, self.idx
        if sc.net == "lo":
            return
        self.down()
        for ns in (self.server_ns, self.client_ns):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            if sc.family == 4:      # no IPv6 neighbour discovery chatter in IPv4 captures
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                "net.ipv6.conf.all.disable_ipv6=1",
                                "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        mtu = str(sc.mtu or (1600 if sc.net == "vlan" else 1500))
        ip("link", "add", self.link[0], "netns", self.server_ns, "mtu", mtu, "type", "veth",
           "peer", "name", self.link[1], "netns", self.client_ns, "mtu", mtu)
        devs = self.link
        if sc.net == "vlan":
            for ns, dev in zip((self.server_ns, self.client_ns), self.link):
                ip("-n", ns, "link", "set", dev, "up")
            tags = ",".join(f"{tpid:#06x}:{vid}" for tpid, vid in sc.vlan)
            self.relay = procs.start("vlan relay", [
                sys.executable, str(Path(__file__).resolve()), "--vlan-relay",
                f"{self.server_ns}:{self.taps[0]}:{self.link[0]}",
                f"{self.client_ns}:{self.taps[1]}:{self.link[1]}", "--tags", tags],
                stdout=subprocess.PIPE, text=True)
            if self.relay.stdout.readline().strip() != "ready":
                raise RuntimeError("VLAN relay did not start")
            devs = self.taps
        for n, (ns, dev) in enumerate(zip((self.server_ns, self.client_ns), devs), start=1):
            if sc.family == 6 and sc.net != "nested":
                ip("-n", ns, "addr", "add", f"fd77:{idx}::{n}/64", "dev", dev, "nodad")
            else:
                ip("-n", ns, "addr", "add", f"10.77.{idx}.{n}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def down(self) -> None:
        if self.sc.net == "lo":
            return
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def _enter_netns(name: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:             # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def vlan_relay(ends: list[tuple[str, str, str]], tags: list[tuple[int, int]]) -> None:
    """Carry Ethernet frames between a TAP device and a veth in each namespace, adding the
    VLAN tags on the way to the veth and removing them on the way back: a VLAN trunk port.
    ``ends`` are (namespace, TAP name, veth name). Runs until SIGTERM."""
    import fcntl
    import select
    import socket

    tag_bytes = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    fds = {}
    for ns, tap_name, link in ends:
        _enter_netns(ns)                    # the TAP and the socket live in this namespace
        tap = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(tap, 0x400454CA, struct.pack("16sH", tap_name.encode(), 0x0002 | 0x1000))  # TUNSETIFF: IFF_TAP | IFF_NO_PI
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        sock.bind((link, 0))
        fds[tap] = (tap, sock, True)
        fds[sock.fileno()] = (tap, sock, False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for fd in select.select(list(fds), [], [])[0]:
            tap, sock, from_tap = fds[fd]
            if from_tap:
                frame = os.read(tap, 65535)
                sock.send(frame[:12] + tag_bytes + frame[12:])
            else:
                try:
                    frame, address = sock.recvfrom(65535)
                except OSError:             # ENETDOWN while a link changes state
                    continue
                if address[2] == 4:         # PACKET_OUTGOING: our own copy
                    continue
                # The kernel may have moved the outer tag out of the frame already.
                offset = 12
                while frame[offset:offset + 2] in (b"\x81\x00", b"\x88\xa8"):
                    offset += 4
                os.write(tap, frame[:12] + frame[offset:])


def relay_udp(listen_port: int, server: str, server_port: int) -> None:
    """A NAT in front of a UDP client (in the client's namespace): datagrams from the client
    (to 127.0.0.1:listen_port) go to the server from this relay's own socket, answers go back. SIGUSR1 rebinds: a new
    socket, so a new source port, as a NAT that lost its mapping would; the old one is
    closed. Prints "ready", then one line per rebinding. Runs until SIGTERM."""
    import select
    import socket

    def outside() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((server, server_port))
        return sock

    inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inside.bind(("127.0.0.1", listen_port))
    out, client, rebind = outside(), None, []
    signal.signal(signal.SIGUSR1, lambda *_: rebind.append(True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        ready = select.select([inside, out], [], [])[0]
        if rebind:
            rebind.clear()
            old, out = out, outside()
            print(f"rebound: source port {old.getsockname()[1]} -> {out.getsockname()[1]}", flush=True)
            old.close()
            continue                        # `ready` may name the closed socket
        for sock in ready:
            if sock is inside:
                data, client = inside.recvfrom(65535)
                out.send(data)
            else:
                try:
                    data = sock.recv(65535)
                except ConnectionRefusedError:  # the server was not there (yet)
                    continue
                if client is not None:
                    inside.sendto(data, client)


# --------------------------------------------------------------------------- pcap reading

def read_pcap(path: Path) -> list[tuple[float, int, bytes]]:
    """[(time, link type, frame)] of a classic pcap or pcapng file."""
    data = path.read_bytes()
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(path, data)
    if magic == b"\xd4\xc3\xb2\xa1":
        endian, frac = "<", 1e-6
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian, frac = ">", 1e-6
    elif magic == b"\x4d\x3c\xb2\xa1":
        endian, frac = "<", 1e-9
    else:
        raise ValueError(f"{path}: not a pcap or pcapng file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out, off = [], 24
    while off + 16 <= len(data):
        sec, sub, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append((sec + sub * frac, linktype, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return out


def _read_pcapng(path: Path, data: bytes) -> list[tuple[float, int, bytes]]:
    """Just what dumpcap writes: little-endian sections, interfaces, enhanced packets."""
    out, off, linktypes, resolution = [], 0, [], []
    while off + 12 <= len(data):
        btype, blen = struct.unpack("<II", data[off:off + 8])
        if btype == 0x0A0D0D0A:
            if data[off + 8:off + 12] != b"\x4d\x3c\x2b\x1a":
                raise ValueError(f"{path}: big-endian pcapng")
            linktypes, resolution = [], []
        elif btype == 1:
            linktypes.append(struct.unpack("<H", data[off + 8:off + 10])[0])
            units, opt = 1e-6, off + 16
            while opt + 4 <= off + blen - 4:
                code, length = struct.unpack("<HH", data[opt:opt + 4])
                if code == 0:
                    break
                if code == 9:
                    units = 10.0 ** -data[opt + 4]
                opt += 4 + length + (-length % 4)
            resolution.append(units)
        elif btype == 6:
            iface, hi, lo, incl, _orig = struct.unpack("<IIIII", data[off + 8:off + 28])
            out.append((((hi << 32) | lo) * resolution[iface], linktypes[iface],
                        data[off + 28:off + 28 + incl]))
        off += blen
    return out


def _link_payload(linktype: int, frame: bytes) -> tuple[list[int], bytes | None]:
    """(VLAN ids, IP packet or None) of a frame."""
    vlans = []
    if linktype in (1, 113, 276):
        offset = {1: 12, 113: 14, 276: 0}[linktype]
        ethertype = struct.unpack("!H", frame[offset:offset + 2])[0]
        while ethertype in (0x8100, 0x88A8):
            vlans.append(struct.unpack("!H", frame[offset + 2:offset + 4])[0] & 0x0FFF)
            offset += 4
            ethertype = struct.unpack("!H", frame[offset:offset + 2])[0]
        start = 20 + 4 * len(vlans) if linktype == 276 else offset + 2
        return vlans, frame[start:] if ethertype in (0x0800, 0x86DD) else None
    if linktype == 101:
        return vlans, frame
    raise ValueError(f"unexpected linktype {linktype}")


def parse_capture(path: Path, sc: Scenario) -> tuple[list[tuple[str, bytes]], dict]:
    """([(direction, openvpn packet)] with direction 'c2s' or 's2c', facts about the file).

    Just enough parsing for record.py's own sanity check: the link types recorded here,
    VLAN tags, IPv4/IPv6 with naive fragment reassembly, UDP/TCP, and for TCP the 2-byte
    length framing over the in-order byte stream.
    """
    proto_num = 17 if sc.transport == "udp" else 6
    streams = {"c2s": b"", "s2c": b""}
    pkts = []
    info = {"linktypes": set(), "vlans": set(), "fragments": 0, "reassembled_opcodes": set(),
            "client_ports": []}    # the client's port of each packet
    fragments = {}
    for _ts, linktype, frame in read_pcap(path):
        info["linktypes"].add(linktype)
        vlans, ip_packet = _link_payload(linktype, frame)
        if vlans:
            info["vlans"].add(tuple(vlans))
        if ip_packet is None:
            continue
        if ip_packet[0] >> 4 == 4:
            ihl = (ip_packet[0] & 0x0F) * 4
            proto, l4 = ip_packet[9], ip_packet[ihl:struct.unpack("!H", ip_packet[2:4])[0]]
            ident, frag = struct.unpack("!HH", ip_packet[4:8])
            frag &= 0x3FFF                  # offset and MF, not DF
            if frag:
                key, offset, more = (ip_packet[12:20], ident), (frag & 0x1FFF) * 8, frag & 0x2000
        else:
            proto, l4 = ip_packet[6], ip_packet[40:40 + struct.unpack("!H", ip_packet[4:6])[0]]
            frag = 0
            if proto == 44:
                proto, frag, ident = struct.unpack("!BxHI", l4[:8])
                key, offset, more, l4 = (ip_packet[8:40], ident), frag & 0xFFF8, frag & 1, l4[8:]
                frag = frag or 1
        if frag:
            info["fragments"] += 1
            pieces = fragments.setdefault(key, {})
            pieces[offset] = (more, l4)
            l4, complete = b"", False
            for off in sorted(pieces):
                if off != len(l4):
                    break
                l4 += pieces[off][1]
                if not pieces[off][0]:
                    complete = True
                    break
            if not complete:
                continue
            del fragments[key]
        if proto != proto_num:
            continue
        sport, dport = struct.unpack("!HH", l4[:4])
        if dport == sc.port:
            direction = "c2s"
        elif sport == sc.port:
            direction = "s2c"
        else:
            continue
        client_port = sport if direction == "c2s" else dport
        if proto == 17:
            pkts.append((direction, l4[8:]))
            info["client_ports"].append(client_port)
            if frag:
                info["reassembled_opcodes"].add(l4[8] >> 3)
        else:
            streams[direction] += l4[(l4[12] >> 4) * 4:]
            buf = streams[direction]
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                pkts.append((direction, buf[2:2 + n]))
                info["client_ports"].append(client_port)
                buf = buf[2 + n:]
            streams[direction] = buf
    return pkts, info


def openvpn_packets(path: Path, sc: Scenario) -> list[tuple[str, bytes]]:
    return parse_capture(path, sc)[0]


def check_capture(path: Path, sc: Scenario) -> list[str]:
    """Minimal wire-level expectations for a scenario. Returns a list of problems."""
    pkts, info = parse_capture(path, sc)
    problems = []
    if not pkts:
        return ["no OpenVPN packets captured"]
    if info["linktypes"] != {sc.linktype}:
        problems.append(f"link types {sorted(info['linktypes'])}, expected {sc.linktype}")
    expected_vlans = {tuple(vid for _tpid, vid in sc.vlan)} if sc.vlan else set()
    if info["vlans"] != expected_vlans:
        problems.append(f"VLAN tags {sorted(info['vlans'])}, expected {sorted(expected_vlans)}")
    if sc.expect_fragments:
        # IPv4 at MTU 576 fragments control packets (opcode 4) too; IPv6 at 1280 only data (9).
        wanted = {4, 9} if sc.family == 4 else {9}
        if not info["fragments"] or not wanted <= info["reassembled_opcodes"]:
            problems.append(f"{info['fragments']} fragments, reassembled opcodes "
                            f"{sorted(info['reassembled_opcodes'])}, expected {sorted(wanted)}")
    elif info["fragments"]:
        problems.append(f"{info['fragments']} unexpected IP fragments")
    if sc.min_packets and len(pkts) <= sc.min_packets:
        problems.append(f"{len(pkts)} OpenVPN packets, expected more than {sc.min_packets}")
    if sc.kind == "static-key":
        return problems + check_static_key(pkts)
    ops = [(d, p[0] >> 3, p[0] & 7) for d, p in pkts]
    if sc.kind == "probe":
        return problems + check_probe(pkts, ops, info["client_ports"])
    if sc.capture_start == "mid-session":
        problems += check_mid_session(ops, sc)
    else:
        problems += check_from_handshake(ops, sc)
    if sc.renegotiation:
        if not any(op == 3 and kid == 1 for _, op, kid in ops):
            problems.append("no P_CONTROL_SOFT_RESET_V1 with key_id 1")
        if not any(op == 9 and kid == 1 for _, op, kid in ops):
            problems.append("no P_DATA_V2 with key_id 1")
    elif any(kid != 0 for _, _, kid in ops):
        problems.append("unexpected key_id != 0")
    if sc.float_client:
        problems += check_float(pkts, ops, info["client_ports"])
    return problems


def check_from_handshake(ops: list[tuple[str, int, int]], sc: Scenario) -> list[str]:
    """A capture started before the server: it opens with the client's reset."""
    problems = []
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
    return problems


def check_mid_session(ops: list[tuple[str, int, int]], sc: Scenario) -> list[str]:
    """A capture started on a running tunnel: no hard reset at all, data in both
    directions from the start; a renegotiation only after key_id 0 data."""
    problems = []
    resets = [o for o in ops if o[1] in (7, 8, 10)]
    if resets:
        problems.append(f"{len(resets)} hard resets in a capture started mid-session")
    for direction in ("c2s", "s2c"):
        if not any(d == direction and op == 9 and kid == 0 for d, op, kid in ops):
            problems.append(f"no key_id 0 P_DATA_V2 {direction}")
    if sc.renegotiation:
        soft = next((i for i, o in enumerate(ops) if o[1:] == (3, 1)), None)
        data0 = next((i for i, o in enumerate(ops) if o[1:] == (9, 0)), None)
        if soft is not None and (data0 is None or data0 > soft):
            problems.append("no key_id 0 data before the renegotiation")
    elif {op for _, op, _ in ops} != {9}:
        problems.append(f"opcodes {sorted({op for _, op, _ in ops})}, expected only P_DATA_V2")
    return problems


def check_float(pkts: list[tuple[str, bytes]], ops, client_ports: list[int]) -> list[str]:
    """The client's packets come from two ports, one after the other, with the same
    peer-id and no new reset from the second port; the server answers there too."""
    problems = []
    runs = [port for i, port in enumerate(client_ports) if pkts[i][0] == "c2s"
            and (i == 0 or port != client_ports[i - 1])]
    if len(set(runs)) != 2 or len(runs) != 2:
        return [f"client ports in runs {runs}, expected one port and then another"]
    old, new = runs
    peer_ids = {port: {pkt[1:4] for (d, pkt), p, (_, op, _) in zip(pkts, client_ports, ops)
                       if d == "c2s" and op == 9 and p == port} for port in runs}
    if len(peer_ids[old]) != 1 or peer_ids[old] != peer_ids[new]:
        problems.append(f"P_DATA_V2 peer-ids {peer_ids}, expected one peer-id from both ports")
    if any(port == new and op in (7, 8) for port, (_, op, _) in zip(client_ports, ops)):
        problems.append("a new reset after the float: a new session, not a float")
    if not any(d == "s2c" and port == new and op == 9 for port, (d, op, _) in zip(client_ports, ops)):
        problems.append("the server never sent data to the new port")
    return problems


def check_probe(pkts: list[tuple[str, bytes]], ops, client_ports: list[int]) -> list[str]:
    """A --try-keys run: many client resets (different sessions and HMAC sizes) from
    one socket, and server resets answering some of them."""
    problems = []
    client = [pkt for d, pkt in pkts if d == "c2s"]
    if {op for d, op, _ in ops if d == "c2s"} != {7}:
        problems.append(f"client opcodes {sorted({op for d, op, _ in ops if d == 'c2s'})}, expected resets only")
    if len(set(client_ports)) != 1:
        problems.append(f"client ports {sorted(set(client_ports))}, expected one socket")
    if len({pkt[1:9] for pkt in client}) < 10:
        problems.append(f"{len({pkt[1:9] for pkt in client})} client session ids, expected a dozen or more")
    if len({len(pkt) for pkt in client}) < 3:
        problems.append(f"client reset sizes {sorted({len(pkt) for pkt in client})}, expected several")
    answers = [pkt for d, pkt in pkts if d == "s2c"]
    if not answers or {pkt[0] >> 3 for pkt in answers} != {8}:
        problems.append(f"server opcodes {sorted({pkt[0] >> 3 for pkt in answers})}, expected resets")
    return problems


def check_static_key(pkts: list[tuple[str, bytes]]) -> list[str]:
    """Static-key data: HMAC-SHA1 (20) | IV (16) | AES-CBC blocks - no opcode, no TLS."""
    problems = []
    if {d for d, _ in pkts} != {"c2s", "s2c"}:
        problems.append("static-key packets not in both directions")
    odd = [len(pkt) for _, pkt in pkts if len(pkt) < 20 + 16 + 16 or (len(pkt) - 36) % 16]
    if odd:
        problems.append(f"packet sizes {odd[:5]} do not fit HMAC-SHA1 | IV | AES-CBC")
    if len(pkts) < 6:
        problems.append(f"only {len(pkts)} static-key packets")
    return problems


# --------------------------------------------------------------------------- recording

def start_capture(sc: Scenario, net: Net, path: Path, procs: Procs) -> subprocess.Popen:
    if sc.capture_tool == "dumpcap":
        argv, ready = ["dumpcap", "-i", net.capture_iface, "-f", f"port {sc.port}", "-w", str(path)], "Capturing on"
    else:
        argv = ["tcpdump", "-i", net.capture_iface, "-U", "-s", "0", "-Z", "root", *sc.capture_args,
                "-w", str(path)]
        if sc.net == "lo":
            # A private link carries only the scenario's traffic; there a port filter would
            # only lose the IP fragments that carry no UDP header.
            argv.append(f"port {sc.port}")
        ready = "listening on"
    dump = procs.start(sc.capture_tool, net.run(net.server_ns, argv),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(5):
        line = dump.stderr.readline()
        if ready in line:
            return dump
        if not line:
            break
    raise RuntimeError(f"{sc.capture_tool} did not start: {line.strip()}")


def start_outer_tunnel(sc: Scenario, idx: int, net: Net, procs: Procs) -> list[subprocess.Popen]:
    """For "nested": a plain UDP OpenVPN tunnel between the namespaces, for the captured
    session to run through. Its logs go next to the captured session's."""
    outer = Scenario(f"{sc.name}-outer", "udp", 4, 1194, "none", Side(), Side(), "connected", "", "")
    started = []
    for role, ns, argv in (("server", net.server_ns, server_argv(outer, idx, local=net.link_addr)),
                           ("client", net.client_ns, client_argv(outer, idx, remote=net.link_addr))):
        log = LOGS / f"{sc.name}.outer-{role}.log"
        with open(log, "w") as f:
            p = procs.start(f"outer {role}", net.run(ns, argv), stdout=f, stderr=subprocess.STDOUT)
        started.append(p)
        if not wait_for(log, INIT_DONE, CONNECT_TIMEOUT, p):
            raise RuntimeError(f"outer tunnel {role} did not come up; see {log}")
    return started


def record(sc: Scenario, idx: int, procs: Procs) -> None:
    pcap_tmp = HERE / f"{sc.file}.tmp"
    slog_tmp = LOGS / f"{sc.name}.server.log.tmp"
    clog_tmp = LOGS / f"{sc.name}.client.log.tmp"
    for f in (pcap_tmp, slog_tmp, clog_tmp):
        f.unlink(missing_ok=True)

    net = Net(sc, idx)
    net.up(procs)
    relay, client, dump_stats = None, None, ""
    try:
        outer = start_outer_tunnel(sc, idx, net, procs) if sc.net == "nested" else []
        dump = None
        if sc.capture_start == "handshake":
            dump = start_capture(sc, net, pcap_tmp, procs)
            time.sleep(0.3)
        nested = sc.net == "nested"
        with open(slog_tmp, "w") as slog, open(clog_tmp, "w") as clog:
            if sc.kind == "static-key":
                server_cmd = static_key_argv(sc, idx, "server", net.server_addr)
            else:
                server_cmd = server_argv(sc, idx, local=net.server_addr,
                                         subnet=f"10.202.{idx}.0" if nested else None,
                                         dev=f"ovdiag-is{idx}" if nested else None)
            server = procs.start("server", net.run(net.server_ns, server_cmd), stdout=slog,
                                 stderr=subprocess.STDOUT)
            # A static-key peer completes its initialisation only once the other one is there.
            ready = r"link local" if sc.kind == "static-key" else INIT_DONE
            if not wait_for(slog_tmp, ready, 10, server):
                raise RuntimeError("server did not start; see " + str(slog_tmp))
            if sc.kind == "probe":
                run_probe(sc, clog)
            else:
                if sc.kind == "static-key":
                    client_cmd = static_key_argv(sc, idx, "client", net.server_addr)
                else:
                    port = None
                    if sc.float_client:
                        relay = procs.start("relay", net.run(net.client_ns, [
                            sys.executable, str(Path(__file__).resolve()), "--udp-relay",
                            str(RELAY_PORT), net.server_addr, str(sc.port)]), stdout=subprocess.PIPE, text=True)
                        if relay.stdout.readline().strip() != "ready":
                            raise RuntimeError("UDP relay did not start")
                        port = RELAY_PORT
                    client_cmd = client_argv(sc, idx, remote="127.0.0.1" if port else net.server_addr, port=port,
                                             dev=f"ovdiag-ic{idx}" if nested else None)
                client = procs.start("client", net.run(net.client_ns, client_cmd),
                                     stdout=clog, stderr=subprocess.STDOUT)
            if sc.outcome == "connected":
                if not wait_for(clog_tmp, INIT_DONE, CONNECT_TIMEOUT, client):
                    raise RuntimeError("client did not connect; see " + str(clog_tmp))
                if sc.capture_start == "mid-session":
                    time.sleep(0.5)             # the handshake's last ACKs are over
                    dump = start_capture(sc, net, pcap_tmp, procs)
                    time.sleep(0.3)
                target = f"10.203.{idx}.1" if sc.kind == "static-key" else f"10.201.{idx}.1"
                if sc.renegotiation:
                    tunnel_ping(sc, net, target)
                    # The first TLS session logs one "Control Channel:" line; the renegotiated
                    # one logs a second. Then wait until data flows with the new key.
                    if not wait_for(clog_tmp, r"Control Channel: TLS", RENEG_TIMEOUT, client, count=2):
                        raise RuntimeError("no renegotiation seen; see " + str(clog_tmp))
                    time.sleep(1.0 if sc.tunnel_ping else 2.0)
                    if sc.tunnel_ping:
                        tunnel_ping(sc, net, target)
                        time.sleep(1.0)
                elif sc.float_client:
                    tunnel_ping(sc, net, target)
                    time.sleep(1.0)
                    relay.send_signal(signal.SIGUSR1)       # the NAT rebinds
                    if not wait_for(slog_tmp, sc.server_log_expect, 10, server):
                        raise RuntimeError("the server did not float the client; see " + str(slog_tmp))
                    tunnel_ping(sc, net, target)
                    time.sleep(KEEPALIVE_SECONDS)
                elif sc.flood:
                    flood = subprocess.run(net.run(net.client_ns, [
                        "ping", "-f", "-q", "-c", str(sc.flood), "-s", "0", "-W", "2", target]),
                        capture_output=True, text=True)
                    if flood.returncode != 0:
                        raise RuntimeError("ping flood through the tunnel failed: " + flood.stdout[-300:])
                    clog.write("# record.py: " + flood.stdout.strip().splitlines()[-2] + "\n")
                    clog.flush()
                    time.sleep(0.5)
                else:
                    if sc.tunnel_ping:
                        tunnel_ping(sc, net, target)
                    time.sleep(KEEPALIVE_SECONDS)
            elif sc.outcome == "failed":
                time.sleep(FAIL_SECONDS)
            if client is not None:
                procs.stop(client)
            time.sleep(0.3)
            procs.stop(server)
        time.sleep(0.3 if sc.net == "lo" else 1.0)
        if dump is not None:
            procs.stop(dump)
            dump_stats = dump.stderr.read()
            dump.stderr.close()
        for p in reversed(outer):
            procs.stop(p)
        if net.relay is not None:
            procs.stop(net.relay)
            net.relay.stdout.close()
        if relay is not None:
            procs.stop(relay)
            (LOGS / f"{sc.name}.relay.log").write_text(relay.stdout.read())
            relay.stdout.close()
    finally:
        net.down()

    # Did the scenario do what it should?
    clog_text = clog_tmp.read_text(errors="replace")
    slog_text = slog_tmp.read_text(errors="replace")
    connected = INIT_DONE in clog_text
    if sc.outcome == "connected" and not connected:
        raise RuntimeError("expected a connection")
    if sc.outcome != "connected" and connected:
        raise RuntimeError("expected no connection, but the client connected")
    if sc.server_log_expect and not re.search(sc.server_log_expect, slog_text):
        raise RuntimeError(f"server log lacks /{sc.server_log_expect}/")
    if sc.kind == "probe" and not re.search(rf"SHA512", clog_text):
        raise RuntimeError("the probe did not find the server's SHA512 tls-auth")
    if sc.flood and not re.search(r"\b0 packets dropped by kernel", dump_stats):
        raise RuntimeError("tcpdump lost packets: " + dump_stats.strip().replace("\n", "; "))
    logs = [clog_text, slog_text]
    if sc.net == "nested":
        logs += [(LOGS / f"{sc.name}.outer-{role}.log").read_text(errors="replace")
                 for role in ("server", "client")]
    for frag in key_fragments():
        if any(frag in text for text in logs):
            raise RuntimeError("key material found in a log")
    problems = check_capture(pcap_tmp, sc)
    if problems:
        raise RuntimeError("capture check failed: " + "; ".join(problems))

    os.replace(pcap_tmp, HERE / sc.file)
    os.replace(slog_tmp, LOGS / f"{sc.name}.server.log")
    os.replace(clog_tmp, LOGS / f"{sc.name}.client.log")
    os.chmod(HERE / sc.file, 0o644)


# --------------------------------------------------------------------------- manifest / README

def manifest_entry(sc: Scenario) -> dict:
    return {
        "file": sc.file,
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
        "format": "pcapng" if sc.capture_tool == "dumpcap" else "pcap",
        "linktype": sc.linktype,
        "captured": sc.captured,
        "vlan": [vid for _tpid, vid in sc.vlan],
        "fragmented": sc.expect_fragments,
        "derived_from": None,
        "group": sc.group,
        "program": {"tls": "openvpn", "static-key": "openvpn --secret",
                    "probe": "ovpndiag probe --try-keys"}[sc.kind],
        "capture_start": sc.capture_start,
        "float": sc.float_client,
    }


def derived_entry(d: Derived) -> dict:
    entry = manifest_entry(BY_NAME[d.source])
    entry.update(file=d.file, linktype=d.linktype, captured=f"derived by derive.py from {d.how}",
                 derived_from=BY_NAME[d.source].file,
                 description=BY_NAME[d.source].description + " Re-encapsulated (derive.py): " + d.how + ".")
    return entry


def make_derived(d: Derived) -> int:
    """Convert the source capture; returns the number of frames."""
    sys.path.insert(0, str(HERE))
    from derive import derive

    return derive(HERE / BY_NAME[d.source].file, HERE / d.file, d.linktype, d.big_endian)


README_HEAD = """\
# captures/ - real OpenVPN 2.6 traffic for ovpndiag's tests

Every capture here was recorded between a real OpenVPN server and a real OpenVPN client - two
separate `openvpn` processes with their own tun devices - by `record.py`, most on loopback
(`tcpdump -i lo -s 0 -U`, classic pcap, linktype Ethernet, talking over 127.0.0.1 or ::1).
The "capture" column says where the others were taken: `tcpdump -i any` (Linux cooked
headers), `dumpcap` (pcapng), or a veth pair between two private network namespaces (addresses
10.77.N.1/.2 or fd77:N::1/2) - with a small MTU for IP fragments, with VLAN tags on the link
(added and removed by a small relay in `record.py` acting as the VLAN-aware switch ports,
because this kernel has no 802.1Q devices; the frames on the veth are really tagged), or with
the session running inside an outer OpenVPN tunnel and captured on its tun device (raw IP; the
outer tunnel's logs are `logs/NAME.outer-*.log`). Recorded with: `{version}`.

Two files are **derived**, not recorded: `derive.py` re-encapsulates a real Ethernet capture
into BSD loopback link types (DLT_NULL, DLT_LOOP) that Linux cannot capture, keeping every
IP packet and timestamp; `derived_from` in the manifest names the source.

* `manifest.json` - one object per capture (transport, address family, port, wrapping, the
  tls-auth digest / key file / key-direction of the server and, under `client`, of the client,
  expected outcome, renegotiation, data channel; file `format`, `linktype`, how it was
  `captured`, `vlan` ids, whether it holds IP fragments, `derived_from`; `group` "basic" or
  "real-world", the client `program`, `capture_start` "handshake" or "mid-session", `float`).
  Key paths are relative to this folder.
* `logs/NAME.server.log`, `logs/NAME.client.log` - both peers' `--verb 3` logs for each capture
  (for `udp-try-keys` the client log is the probe's output; `logs/udp-float.relay.log` is the NAT's).
  Failure reasons ("packet HMAC authentication failed", "cannot locate HMAC in incoming
  packet", "tls-crypt unwrap error", "VERIFY ERROR") are only visible there.
* `keys/` - the **test-only, publicly known** PKI and static keys the captures were made with
  (see `keys/README.md`). Never use them for anything real.
* `record.py` - the script that made all of this; `derive.py` - the re-encapsulation.

Common settings: server `--server 10.201.N.0 255.255.255.0 --topology subnet --dh none`,
EC P-256 certificates, default `data-ciphers` (AES-256-GCM is negotiated), `--ping 1` on both
sides, `--disable-dco`; client `--client --nobind --remote-cert-tls server --connect-retry 1 1`.
Failing clients also use `--server-poll-timeout 1` (`--hand-window 2` for the untrusted
certificate over UDP) so several attempts fit into the ~{fail:g} s capture. Connected captures
run ~{keep:g} s after "Initialization Sequence Completed".

## Re-recording

Needs root, `openvpn` (2.6), `tcpdump`, `ip` and `ping` (`dumpcap` for the pcapng capture):

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

## Real-world captures (`group` "real-world")

The "basic" captures each hold one clean session (or failing handshake) from its first packet.
The "real-world" ones are made the way users make captures, for what a reader meets there:

* `capture_start` "mid-session": tcpdump is started 0.5 s after "Initialization Sequence
  Completed", so the capture holds no reset at all - it opens with data packets (and a TCP
  stream without its SYN). With `--reneg-sec {reneg}` a renegotiation follows inside the capture;
  its key_id 1 control packets are under dynamic tls-crypt (2.6 peers), whatever the wrapping.
* Pings that must cross the tunnel need the peers in two namespaces (on one host both tun
  addresses are local, so a ping never enters the tunnel): those captures are taken on the veth
  (MTU 1500), where the kernel's ARP frames also appear.
* `udp-float`: the client talks to a small UDP relay in its own namespace (`record.py
  --udp-relay`), which forwards to the server from its own socket and, on SIGUSR1, from a new one
  - a NAT that rebinds. The capture is taken on the server's side of the relay, so the client's
  source port changes mid-session; the server (verb 4) logs "Float requested for peer 0" and
  "peer 0 (...) floated from ... to ...".
* `udp-midsession-flood`: `ping -f -s 0` through the tunnel (28-byte IP packets, so ~110 bytes a
  frame in the file), tcpdump with a 32 MB buffer (`-B 32768`, no `--immediate-mode`): the
  recording fails unless tcpdump reports 0 packets dropped by kernel. About 2.9 MB - most of
  this folder.
* `udp-try-keys`: `python3 -m ovpndiag probe --try-keys` from this checkout: 19 resets with
  different wrappings from one socket; only the right one is answered.
* `udp-static-key`: `openvpn --secret` point-to-point peers (2.6 logs "DEPRECATED OPTION: The
  option --secret is deprecated" and that 2.7 removes non-TLS mode); the packets have no opcode
  byte, so tools that read them as TLS-mode OpenVPN invent opcodes, session ids and peer-ids.

## Captures

| file | transport/port | wrapping | outcome | packets | capture | what it shows |
|---|---|---|---|---|---|---|
"""


def openvpn_version() -> str:
    try:
        out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown"


def write_docs() -> None:
    present = [sc for sc in SCENARIOS if (HERE / sc.file).exists()]
    derived = [d for d in DERIVED if (HERE / d.file).exists()]
    MANIFEST.write_text(json.dumps([manifest_entry(sc) for sc in present] +
                                   [derived_entry(d) for d in derived], indent=2) + "\n")
    rows = []
    for sc, d in [(sc, None) for sc in present] + [(BY_NAME[d.source], d) for d in derived]:
        file = d.file if d else sc.file
        n = len(read_pcap(HERE / file))
        tp = f"{sc.transport}{'6' if sc.family == 6 else ''}/{sc.port}"
        wrapping = sc.wrapping
        if sc.kind == "probe":
            wrapping += (f" {sc.server.auth}, server key-dir {sc.server.key_direction}; the probe tries "
                         f"every setting with {sc.client.key}")
        elif sc.kind == "static-key":
            wrapping += f" {sc.server.key}, auth {sc.server.auth}, AES-256-CBC, key-dir " \
                        f"{sc.server.key_direction}/{sc.client.key_direction}"
        elif sc.wrapping == "tls-auth":
            kd = lambda s: "none" if s.key_direction is None else str(s.key_direction)
            if sc.server.auth == sc.client.auth and sc.server.key == sc.client.key:
                wrapping += f" {sc.server.auth}, key-dir {kd(sc.server)}/{kd(sc.client)}"
            else:
                wrapping += (f" server {sc.server.auth} {sc.server.key} dir {kd(sc.server)}, "
                             f"client {sc.client.auth} {sc.client.key} dir {kd(sc.client)}")
        elif sc.server.key != sc.client.key and sc.wrapping == "tls-crypt":
            wrapping += f" (client {sc.client.key})"
        if d:
            capture = f"derived (link type {d.linktype})"
            text = f"Derived from `{sc.file}`: {d.how}."
        else:
            capture = f"`{sc.captured}`" if sc.net == "lo" else sc.captured
            text = f"{sc.description} Shows {sc.shows}."
        rows.append(f"| `{file}` | {tp} | {wrapping} | {sc.outcome} | {n} | {capture} | {text} |")
    README.write_text(README_HEAD.format(version=openvpn_version(), fail=FAIL_SECONDS,
                                         keep=KEEPALIVE_SECONDS, reneg=RENEG_SECONDS) + "\n".join(rows) + "\n")


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
    ap.add_argument("--vlan-relay", nargs=2, metavar="NS:TAP:VETH", help=argparse.SUPPRESS)
    ap.add_argument("--tags", help=argparse.SUPPRESS)
    ap.add_argument("--udp-relay", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.udp_relay:                  # internal: started by record() for floating clients
        port, server, server_port = args.udp_relay
        relay_udp(int(port), server, int(server_port))
        return 0

    if args.vlan_relay:                 # internal: started by Net.up() for "vlan" scenarios
        vlan_relay([tuple(end.split(":")) for end in args.vlan_relay],
                   [(int(tpid, 0), int(vid)) for tpid, vid in
                    (tag.split(":") for tag in args.tags.split(","))])
        return 0

    if args.list:
        for sc in SCENARIOS:
            where = f"{sc.transport}{'6' if sc.family == 6 else ''}/{sc.port}"
            print(f"{sc.name:32} {where:11} {sc.wrapping:13} {sc.outcome}")
        for d in DERIVED:
            print(f"{d.name:32} derived from {d.source} (link type {d.linktype})")
        return 0
    if args.docs_only:
        write_docs()
        return 0

    unknown = [n for n in args.names if n not in BY_NAME and n not in DERIVED_BY_NAME]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    chosen = [BY_NAME[n] for n in args.names if n in BY_NAME] if args.names else SCENARIOS
    to_derive = [DERIVED_BY_NAME[n] for n in args.names if n in DERIVED_BY_NAME] if args.names else DERIVED
    existing = [d.name for d in to_derive if (HERE / d.file).exists()]
    if existing and not args.force:
        ap.error(f"captures exist, use --force to overwrite: {', '.join(existing)}")
    if not chosen:                      # only conversions: no root needed
        for d in to_derive:
            print(f"[{d.name}] derived: {make_derived(d)} frames")
        write_docs()
        return 0
    if os.geteuid() != 0:
        ap.error("needs root (tun devices, packet capture)")
    for tool in ("openvpn", "tcpdump"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found")
    existing = [sc.name for sc in chosen if (HERE / sc.file).exists()]
    if existing and not args.force:
        ap.error(f"captures exist, use --force to overwrite: {', '.join(existing)}")
    if args.new_keys:
        stale = [sc.name for sc in SCENARIOS
                 if (HERE / sc.file).exists() and sc not in chosen]
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
            n = len(read_pcap(HERE / sc.file))
            print(f"[{sc.name}] ok: {n} packets, {(HERE / sc.file).stat().st_size} bytes")
        for d in to_derive:
            if (HERE / BY_NAME[d.source].file).exists():
                print(f"[{d.name}] derived: {make_derived(d)} frames")
    finally:
        procs.stop_all()
        write_docs()
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
