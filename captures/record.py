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

    sudo python3 captures/record.py --out /tmp/again udp-plain   # elsewhere (compare, don't replace)

Existing captures are not overwritten without ``--force``. A scenario that does not reach
its expected outcome (per the OpenVPN logs and a small check of the capture) is an error;
its unfinished files are left as ``*.tmp`` for inspection.

This file is the scenario table (a new capture is one row) and the command line; how a
scenario is recorded, checked and documented is in the ``recording`` package next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from recording.docs import make_derived, openvpn_version, write_docs
from recording.layout import CAPTURES, Layout
from recording.pcapfile import read_pcap
from recording.pki import ensure_keys
from recording.procs import Procs
from recording.run import record
from recording.scenario import RENEG_SECONDS, BusyClient, Derived, Scenario, Side


# --------------------------------------------------------------------------- scenarios

def _ta(key="keys/ta.key", auth="SHA1", kd=None):
    return Side(key=key, auth=auth, key_direction=kd)


def _busy_clients() -> list[BusyClient]:
    """busy-mixed's 22 clients, one per port from 20001 on, started 1.2 s apart with the kinds
    interleaved; each kind with what `ovpndiag analyze` must say about each of its sessions
    without keys and given the server's (keys/ta.key, SHA256, key-direction 0). Every client
    sends a username and password (keys/user-pass.txt, which the server accepts)."""
    user = ["--auth-user-pass", "keys/user-pass.txt"]
    unanswered = dict(attempts=3, client_log_expect=r"Server poll timeout")
    kinds = {
        "good": dict(verdict="ok", verdict_with_keys="ok", extra=user),
        "wrong-key": dict(verdict="server-silent", verdict_with_keys="wrong-key", extra=user,
                          wrap=_ta("keys/ta-wrong.key", "SHA256", 1), **unanswered,
                          server_log_expect=r"packet HMAC authentication failed"),
        "wrong-key-direction": dict(verdict="server-silent", verdict_with_keys="wrong-key-direction",
                                    extra=user, wrap=_ta(auth="SHA256", kd=0), **unanswered,
                                    server_log_expect=r"packet HMAC authentication failed"),
        "no-tls-auth": dict(verdict="server-silent", verdict_with_keys="no-tls-auth", extra=user,
                            wrapping="none", **unanswered,
                            server_log_expect=r"cannot locate HMAC in incoming packet from \[AF_INET\]127\.0\.0\.1:{port}"),
        "untrusted-cert": dict(verdict="client-certificate-rejected",
                               verdict_with_keys="client-certificate-rejected", cert="rogue-client",
                               extra=user + ["--hand-window", "2"], attempts=3,
                               client_log_expect=r"TLS key negotiation failed to occur within 2 seconds",
                               server_log_expect=r"127\.0\.0\.1:{port} VERIFY ERROR"),
        # AUTH_FAILED is inside TLS: without a keylog only "TLS done, no data" shows. The server
        # ignores a new reset from the same address and port for 5 s after an AUTH_FAILED
        # ("Delayed exit in 5 seconds"), so these clients wait 6 s before trying again.
        "wrong-password": dict(verdict="stopped-after-tls", verdict_with_keys="stopped-after-tls",
                               extra=["--auth-user-pass", "keys/user-pass-wrong.txt", "--auth-retry", "nointeract",
                                      "--connect-retry", "6", "6"],
                               attempts=3, client_log_expect=r"AUTH: Received control message: AUTH_FAILED",
                               server_log_expect=r"127\.0\.0\.1:{port} TLS Auth Error: Auth Username/Password "
                                                 r"verification failed"),
    }
    order = ["good", "wrong-key", "good", "untrusted-cert", "good", "wrong-password", "good",
             "wrong-key-direction", "good", "no-tls-auth", "good", "wrong-key", "good", "good",
             "untrusted-cert", "good", "wrong-password", "good", "wrong-key-direction", "good",
             "wrong-key", "good"]
    return [BusyClient(20001 + n, kind, 0.5 + 1.2 * n, **kinds[kind]) for n, kind in enumerate(order)]


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
        "UDP session without wrapping whose client floats: it talks through a small UDP relay "
        "(recording/relays.py, a NAT) that, mid-session, sends from a new source port; the 2.6 server recognises "
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
    # ---- failures for `ovpndiag analyze`: one per verdict the captures above lack, each with
    # the verdict it must get in the manifest (group "failures")
    Scenario(
        "fail-expired-server-cert", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "The server presents an expired certificate (keys/server-expired.crt, notAfter 30 days before "
        "its making); the client allows at most TLS 1.2, so the certificate crosses in clear. The client "
        "refuses it (its log: \"VERIFY ERROR: ... certificate has expired\", \"Sent fatal SSL alert: "
        "certificate expired\"), but restarts before that alert leaves: none is on the wire.",
        "resets, ClientHello, the server's TLS 1.2 flight (Server Hello, Certificate, Server Key Exchange, "
        "then Certificate Request and Server Hello Done in a second packet), never acknowledged; the "
        "server retransmits it while the client starts over each second with a new session id",
        server_cert="server-expired", server_answers=True, group="failures",
        verdict="server-certificate-rejected",
        client_log_expect=r"VERIFY ERROR: depth=0, error=certificate has expired",
        client_extra=["--tls-version-max", "1.2", "--hand-window", "2"]),
    Scenario(
        "fail-client-cert-untrusted-tls12", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "Like fail-untrusted-cert (a client certificate from a CA the server does not trust, over UDP), "
        "but the client allows at most TLS 1.2, so its certificate crosses in clear.",
        "resets, the TLS 1.2 handshake up to the client's Certificate, Client Key Exchange, Certificate "
        "Verify and Finished, never acknowledged: the server's log says \"Sent fatal SSL alert: unknown CA\", "
        "but none reaches the wire; the client gives up after --hand-window 2 and starts over",
        client_cert="rogue-client", group="failures", verdict="client-certificate-rejected",
        server_log_expect=r"certificate verify failed|VERIFY ERROR",
        client_extra=["--tls-version-max", "1.2", "--hand-window", "2"]),
    Scenario(
        "fail-tls-version-mismatch", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "The server requires TLS 1.3 (--tls-version-min 1.3), the client offers at most TLS 1.2 "
        "(--tls-version-max 1.2): the server refuses the ClientHello (its log: \"Sent fatal SSL alert: "
        "protocol version\"), but no alert reaches the wire.",
        "resets, the client's ClientHello offering TLS 1.0-1.2, then nothing from the server (not even an "
        "ACK); the client gives up after --hand-window 2 and starts over",
        server_answers=True, group="failures", verdict="client-hello-rejected",
        server_log_expect=r"Sent fatal SSL alert: protocol version",
        server_extra=["--tls-version-min", "1.3"],
        client_extra=["--tls-version-max", "1.2", "--hand-window", "2"]),
    Scenario(
        "fail-auth-failed", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "The server checks username/password with --auth-user-pass-verify /bin/false via-env (it refuses "
        "everyone); the client sends keys/user-pass.txt and gets AUTH_FAILED, then exits (--auth-retry none).",
        "a complete TLS 1.3 handshake, the key-method 2 messages and the server's AUTH_FAILED (a 76-byte "
        "P_CONTROL_V1, sent again 2 s later: the exiting client never ACKs it) - inside TLS, so only "
        "their lengths show - and no data packet",
        server_answers=True, group="failures", verdict="auth-failed",
        server_log_expect=r"Auth Username/Password verification failed",
        client_log_expect=r"AUTH: Received control message: AUTH_FAILED",
        server_extra=["--script-security", "2", "--auth-user-pass-verify", "/bin/false", "via-env"],
        client_extra=["--auth-user-pass", "keys/user-pass.txt"]),
    Scenario(
        "fail-no-shared-cipher", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "The server allows only AES-256-GCM (--data-ciphers), the client only CHACHA20-POLY1305: after "
        "TLS the server finds no common data cipher and sends \"AUTH_FAILED,Data channel cipher "
        "negotiation failed (no shared cipher)\" inside TLS; the client exits.",
        "a complete TLS 1.3 handshake, the key-method 2 messages and the server's AUTH_FAILED with its "
        "reason (a 134-byte P_CONTROL_V1, sent again 2 s later), no data packet",
        server_answers=True, group="failures", verdict="no-shared-cipher",
        server_log_expect=r"No common cipher between server and client",
        client_log_expect=r"AUTH_FAILED,Data channel cipher negotiation failed",
        server_extra=["--data-ciphers", "AES-256-GCM"],
        client_extra=["--data-ciphers", "CHACHA20-POLY1305"]),
    Scenario(
        "fail-port-closed", "udp", 4, 1194, "none", Side(), Side(), "failed",
        "Nothing listens on 127.0.0.1:1194 (no server started): the kernel answers each client reset "
        "with an ICMP port unreachable (captured with 'port 1194 or icmp').",
        "client resets, each followed by ICMP destination unreachable (port unreachable) quoting it",
        kind="no-server", group="failures", verdict="port-closed"),
    Scenario(
        "fail-port-closed-tcp", "tcp", 4, 1194, "none", Side(), Side(), "failed",
        "Like fail-port-closed over TCP (--proto tcp-client): nothing listens on 127.0.0.1:1194, so the "
        "kernel answers each connection attempt's SYN with a RST (connection refused); the client retries.",
        "one SYN per attempt, each answered by RST/ACK from port 1194; no payload at all",
        kind="no-server", group="failures", verdict="port-closed",
        client_log_expect=r"Connection refused"),
    Scenario(
        "fail-client-cert-untrusted-tcp-tls12", "tcp", 4, 1294, "none", Side(), Side(), "failed",
        "Like fail-untrusted-cert-tcp (a client certificate from a CA the server does not trust, over TCP), "
        "but the client allows at most TLS 1.2, so its certificate crosses in clear; the server closes "
        "the connection (FIN) right after the client's flight, with no TLS alert on the wire.",
        "one TCP connection per attempt: resets, the TLS 1.2 handshake up to the client's Certificate, "
        "Client Key Exchange, Certificate Verify and Finished, then the server's FIN",
        client_cert="rogue-client", group="failures", verdict="client-certificate-rejected",
        server_log_expect=r"certificate verify failed|VERIFY ERROR",
        client_extra=["--tls-version-max", "1.2"]),
    Scenario(
        "fail-expired-server-cert-tls13", "udp", 4, 1295, "none", Side(), Side(), "failed",
        "Like fail-expired-server-cert (the server presents keys/server-expired.crt), but with TLS 1.3: "
        "the certificate is encrypted, so only who stopped answering shows. The client refuses it "
        "(\"VERIFY ERROR: ... certificate has expired\") and starts over.",
        "resets, ClientHello, the server's TLS 1.3 flight (Server Hello, then the encrypted rest), "
        "then no Finished from the client: it restarts with a new session id while the server "
        "retransmits its flight",
        server_cert="server-expired", server_answers=True, group="failures",
        verdict="server-certificate-rejected",
        client_log_expect=r"VERIFY ERROR: depth=0, error=certificate has expired",
        client_extra=["--hand-window", "2"]),
    # ---- a busy server: many clients at once, with mixed outcomes (group "busy")
    Scenario(
        "busy-mixed", "udp", 4, 1296, "tls-auth", _ta(auth="SHA256", kd=0), _ta(auth="SHA256", kd=1), "mixed",
        "One server (tls-auth SHA256, key-direction 0, --duplicate-cn, usernames checked by "
        "recording/user-pass-verify.sh against keys/user-pass.txt) and 22 real clients, each bound to "
        "its own port (--lport 20001..20022), started 1.2 s apart: 12 good ones (connected 6 s, then "
        "EXIT), 3 with a wrong tls-auth key, 2 with the server's key-direction, 1 without tls-auth, 2 "
        "with an untrusted certificate, 2 with a wrong password (--auth-retry nointeract). Every failing "
        "client is stopped after its third attempt. The manifest's `sessions` gives each session's verdict.",
        "22 client ports, 12 sessions with data both ways, 24 failed ones (3 per failing client: a new "
        "session id from the same port each time) overlapping in time",
        kind="busy", group="busy", clients=_busy_clients(),
        server_extra=["--duplicate-cn", "--script-security", "2",
                      "--auth-user-pass-verify", "/bin/sh recording/user-pass-verify.sh", "via-file"]),
    Scenario(
        "fail-no-tls-auth", "udp", 4, 1194, "tls-auth", _ta(kd=0), Side(), "failed",
        "The server has tls-auth (ta.key, key-direction 0, SHA1), the client has no tls-auth at all: "
        "its resets carry no HMAC and the server drops them without a word. (analyze: no-tls-auth given the "
        "server's key; server-silent without it.)",
        "only plain 14-byte client resets, one per attempt, each from a new source port with a new session id",
        group="failures", verdict="no-tls-auth",
        server_log_expect=r"cannot locate HMAC in incoming packet"),
    Scenario(
        "fail-tls-crypt-v2-wrong-key", "udp", 4, 1194, "tls-crypt-v2",
        Side(key="keys/tcv2-server.key"), Side(key="keys/tcv2-client-other.key"), "failed",
        "The client's tls-crypt-v2 key was made with another server key (tcv2-server-other.key): its "
        "wrapped client key (WKc) does not unwrap with the server's, which drops its resets. (analyze: wrong-key "
        "given the server's tls-crypt-v2 key; server-silent without it.)",
        "only client P_CONTROL_HARD_RESET_CLIENT_V3 resets with their WKc; server logs that it cannot "
        "extract the client key",
        group="failures", verdict="wrong-key",
        server_log_expect=r"can not extract tls-crypt-v2 client key"),
    # ---- decryptable: the client is `ovpndiag handshake --keylog`, so each capture has the NSS key
    # log of its TLS session (captures/NAME.keys; group "keylog"; recording/handshake.py)
    Scenario(
        "keylog-tls13", "udp", 4, 3194, "none", Side(), Side(), "connected",
        "`ovpndiag handshake --keylog` against an OpenVPN 2.6 server: TLS 1.3 (TLS_AES_256_GCM_SHA384), "
        "key-method 2, PUSH_REQUEST/PUSH_REPLY, an ICMP echo through the tunnel, EXIT; the key log "
        "keylog-tls13.keys decrypts the control channel.",
        "a whole session whose TLS 1.3 records decrypt with its key log: certificates, Finished, "
        "key-method 2 both ways, PUSH_REPLY, EXIT",
        kind="handshake", group="keylog", verdict="ok"),
    Scenario(
        "keylog-tls13-chacha", "udp", 4, 3195, "none", Side(), Side(), "connected",
        "Like keylog-tls13, but the server allows only TLS_CHACHA20_POLY1305_SHA256 "
        "(--tls-ciphersuites).",
        "TLS 1.3 with CHACHA20-POLY1305 records",
        kind="handshake", group="keylog", verdict="ok",
        server_extra=["--tls-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]),
    Scenario(
        "keylog-tcp-tls13", "tcp", 4, 3196, "none", Side(), Side(), "connected",
        "Like keylog-tls13 over TCP.",
        "TLS 1.3 inside TCP framing, with its key log",
        kind="handshake", group="keylog", verdict="ok"),
    Scenario(
        "keylog-tls12", "udp", 4, 3197, "none", Side(), Side(), "connected",
        "`ovpndiag handshake --keylog --tls-version-max 1.2`: TLS 1.2 with "
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 (explicit GCM nonces); the key log has its CLIENT_RANDOM line.",
        "a TLS 1.2 session (certificates in clear) whose encrypted records decrypt with the master secret",
        kind="handshake", group="keylog", verdict="ok", client_extra=["--tls-version-max", "1.2"]),
    Scenario(
        "keylog-tls12-chacha", "udp", 4, 3198, "none", Side(), Side(), "connected",
        "Like keylog-tls12, but the server allows only TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256 (--tls-cipher).",
        "TLS 1.2 with CHACHA20-POLY1305 records",
        kind="handshake", group="keylog", verdict="ok", client_extra=["--tls-version-max", "1.2"],
        server_extra=["--tls-cipher", "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"]),
    Scenario(
        "keylog-tls12-cbc", "udp", 4, 3199, "none", Side(), Side(), "connected",
        "Like keylog-tls12, but the server allows only TLS-ECDHE-ECDSA-WITH-AES-128-CBC-SHA256 (--tls-cipher): "
        "a CBC suite, which analyze names instead of decrypting.",
        "TLS 1.2 with an AES-128-CBC suite",
        kind="handshake", group="keylog", verdict="ok", client_extra=["--tls-version-max", "1.2"],
        server_extra=["--tls-cipher", "TLS-ECDHE-ECDSA-WITH-AES-128-CBC-SHA256"]),
    Scenario(
        "keylog-auth-failed", "udp", 4, 3194, "none", Side(), Side(), "failed",
        "The server refuses every username/password (--auth-user-pass-verify /bin/false via-env); "
        "`ovpndiag handshake --keylog --auth-user-pass keys/user-pass.txt` gets AUTH_FAILED inside TLS 1.3.",
        "the AUTH_FAILED inside TLS 1.3, readable with the key log",
        kind="handshake", group="keylog", verdict="auth-failed", server_answers=True,
        server_log_expect=r"Auth Username/Password verification failed",
        client_log_expect=r"AUTH_FAILED",
        server_extra=["--script-security", "2", "--auth-user-pass-verify", "/bin/false", "via-env"],
        client_extra=["--auth-user-pass", "keys/user-pass.txt"]),
    Scenario(
        "keylog-no-shared-cipher", "udp", 4, 3195, "none", Side(), Side(), "failed",
        "The server allows only AES-256-GCM (--data-ciphers), `ovpndiag handshake --keylog` offers only "
        "CHACHA20-POLY1305: the server sends \"AUTH_FAILED,Data channel cipher negotiation failed (no shared "
        "cipher)\" inside TLS 1.3.",
        "the AUTH_FAILED with its reason inside TLS 1.3, readable with the key log",
        kind="handshake", group="keylog", verdict="no-shared-cipher", server_answers=True,
        server_log_expect=r"No common cipher between server and client",
        client_log_expect=r"AUTH_FAILED",
        server_extra=["--data-ciphers", "AES-256-GCM"],
        client_extra=["--data-ciphers", "CHACHA20-POLY1305"]),
    Scenario(
        "keylog-client-cert-rejected", "udp", 4, 3196, "none", Side(), Side(), "failed",
        "`ovpndiag handshake --keylog` presents a certificate from a CA the server does not trust "
        "(keys/rogue-client.crt) under TLS 1.3: the server refuses it after its own Finished. 5 s in, the "
        "handshake sends a fresh reset to learn whether the server still answers anybody: a second session "
        "of one reset each way (incomplete).",
        "the client's encrypted certificate (readable with the key log), then silence from the server: not "
        "even an encrypted alert; the client retransmits its flight",
        kind="handshake", group="keylog", verdict="client-certificate-rejected", server_answers=True,
        client_cert="rogue-client", server_log_expect=r"certificate verify failed|VERIFY ERROR",
        client_extra=["-t", "6"]),
    Scenario(
        "keylog-auth-token", "udp", 4, 3197, "none", Side(), Side(), "connected",
        "The server accepts every username/password (--auth-user-pass-verify /bin/true via-env) and "
        "pushes a session token (--auth-gen-token); `ovpndiag handshake --keylog --auth-user-pass "
        "keys/user-pass.txt` connects.",
        "a PUSH_REPLY with an auth-token inside TLS 1.3 (a credential: analyze hides its value), "
        "the client's username and password in its key-method 2 message",
        kind="handshake", group="keylog", verdict="ok",
        server_log_expect=r"TLS: Username/Password authentication succeeded",
        server_extra=["--script-security", "2", "--auth-user-pass-verify", "/bin/true", "via-env",
                      "--auth-gen-token"],
        client_extra=["--auth-user-pass", "keys/user-pass.txt"]),
    Scenario(
        "keylog-tls13-hrr", "udp", 4, 3198, "none", Side(), Side(), "connected",
        "The server allows only the secp384r1 group (--tls-groups), for which the client sent no key "
        "share: a TLS 1.3 HelloRetryRequest, a second ClientHello, then the session as keylog-tls13.",
        "a HelloRetryRequest (a ServerHello with the special random) before the real ServerHello",
        kind="handshake", group="keylog", verdict="ok", server_extra=["--tls-groups", "secp384r1"]),
    Scenario(
        "keylog-tls-crypt-v2", "udp", 4, 3199, "tls-crypt-v2",
        Side(key="keys/tcv2-server.key"), Side(key="keys/tcv2-client.key"), "connected",
        "`ovpndiag handshake --keylog --tls-crypt-v2 keys/tcv2-client.key` against a tls-crypt-v2 server: "
        "the TLS inside is encrypted twice (tls-crypt, then TLS 1.3); the server key opens the first, the "
        "key log the second. The ClientHello travels in P_CONTROL_WKC_V1.",
        "TLS 1.3 under tls-crypt-v2, readable with the server key and the key log together",
        kind="handshake", group="keylog", verdict="ok"),
]

BY_NAME = {s.name: s for s in SCENARIOS}

DERIVED: list[Derived] = [
    Derived("udp6-null", "udp6-tls-auth", 0, False,
            "udp6-tls-auth.pcap with each Ethernet header replaced by BSD loopback's 4-byte address "
            "family in host byte order (DLT_NULL, AF_INET6 = 30 as macOS tcpdump -i lo0 writes)"),
    Derived("tcp-loop", "tcp-tls-auth", 108, True,
            "tcp-tls-auth.pcap with each Ethernet header replaced by OpenBSD loopback's address family "
            "in network byte order (DLT_LOOP, AF_INET = 2), written as a big-endian pcap file"),
    # 13 s: between the AUTH_FAILED of port 20006's second attempt (~12 s) and its retransmission
    # (~14 s), so the cut holds a failed session's lone tail as well as running good ones.
    Derived("busy-mixed-cut", "busy-mixed", 1, False,
            "the frames of busy-mixed.pcap from 13 s after its first on, as if tcpdump had been started "
            "then (derive.py --from-seconds 13): good sessions already running, the tails of others",
            start_seconds=13.0),
]
DERIVED_BY_NAME = {d.name: d for d in DERIVED}


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
    ap.add_argument("--out", type=Path, default=CAPTURES, metavar="DIR",
                    help="write captures, logs/, manifest.json and README.md there "
                         "(default: captures/ itself; keys always come from captures/keys/)")
    args = ap.parse_args()
    layout = Layout(args.out.resolve())

    if args.list:
        for sc in SCENARIOS:
            where = f"{sc.transport}{'6' if sc.family == 6 else ''}/{sc.port}"
            print(f"{sc.name:32} {where:11} {sc.wrapping:13} {sc.outcome}")
        for d in DERIVED:
            print(f"{d.name:32} derived from {d.source} (link type {d.linktype})")
        return 0
    if args.docs_only:
        write_docs(SCENARIOS, DERIVED, layout)
        return 0

    unknown = [n for n in args.names if n not in BY_NAME and n not in DERIVED_BY_NAME]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    if args.new_keys and layout.out != CAPTURES:
        ap.error("--new-keys would make the bundled captures stale; use it without --out")
    chosen = [BY_NAME[n] for n in args.names if n in BY_NAME] if args.names else SCENARIOS
    to_derive = [DERIVED_BY_NAME[n] for n in args.names if n in DERIVED_BY_NAME] if args.names else DERIVED
    existing = [d.name for d in to_derive if (layout.out / d.file).exists()]
    if existing and not args.force:
        ap.error(f"captures exist, use --force to overwrite: {', '.join(existing)}")
    if not chosen:                      # only conversions: no root needed
        for d in to_derive:
            print(f"[{d.name}] derived: {make_derived(d, BY_NAME[d.source], layout)} frames")
        write_docs(SCENARIOS, DERIVED, layout)
        return 0
    if os.geteuid() != 0:
        ap.error("needs root (tun devices, packet capture)")
    for tool in ("openvpn", "tcpdump"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found")
    existing = [sc.name for sc in chosen if (layout.out / sc.file).exists()]
    if existing and not args.force:
        ap.error(f"captures exist, use --force to overwrite: {', '.join(existing)}")
    if args.new_keys:
        stale = [sc.name for sc in SCENARIOS
                 if (layout.out / sc.file).exists() and sc not in chosen]
        if stale:
            ap.error("--new-keys makes these captures stale; record them too: " + ", ".join(stale))

    ensure_keys(args.new_keys)
    layout.logs.mkdir(parents=True, exist_ok=True)
    print(openvpn_version())

    procs = Procs()
    failures = []
    try:
        for sc in chosen:
            idx = SCENARIOS.index(sc) + 1
            print(f"[{sc.name}] recording ...", flush=True)
            try:
                record(sc, idx, procs, layout)
            except Exception as e:  # report, clean up, continue with the next scenario
                procs.stop_all()
                failures.append(sc.name)
                print(f"[{sc.name}] ERROR: {e}", file=sys.stderr)
                continue
            file = layout.out / sc.file
            print(f"[{sc.name}] ok: {len(read_pcap(file))} packets, {file.stat().st_size} bytes")
        for d in to_derive:
            if (layout.out / BY_NAME[d.source].file).exists():
                print(f"[{d.name}] derived: {make_derived(d, BY_NAME[d.source], layout)} frames")
    finally:
        procs.stop_all()
        write_docs(SCENARIOS, DERIVED, layout)
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
