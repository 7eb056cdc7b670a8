"""openvpn (and ovpndiag probe) command lines for a scenario's peers.

Paths in them (keys/...) are relative to captures/, where every process runs."""

from __future__ import annotations

import os
import subprocess
import sys

from .layout import CAPTURES
from .scenario import BusyClient, Scenario, Side


def wrap_args(side: Side, wrapping: str) -> list[str]:
    if side.key is None:                # this side has no wrapping (fail-no-tls-auth's client)
        return []
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
            "--ca", "keys/ca.crt", "--cert", f"keys/{sc.server_cert}.crt", "--key", f"keys/{sc.server_cert}.key",
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


def busy_client_argv(sc: Scenario, client: BusyClient) -> list[str]:
    """One of a busy scenario's clients: bound to its own port on 127.0.0.1 (a restart binds
    it again, so every session of this client comes from that port; a failing client exits
    after its ``attempts``), without a tun device
    (``--dev null``: the keepalive pings are the data) and announcing its exit (``EXIT`` inside
    TLS) so the server ends a good session when the client is stopped."""
    wrap = client.wrap or sc.client
    argv = ["openvpn",
            "--client",
            "--remote", "127.0.0.1", str(sc.port),
            "--proto", "udp4", "--local", "127.0.0.1", "--lport", str(client.port), "--bind",
            "--dev", "null", "--ifconfig-noexec", "--route-noexec",
            "--ca", "keys/ca.crt",
            "--cert", f"keys/{client.cert}.crt", "--key", f"keys/{client.cert}.key",
            "--remote-cert-tls", "server",
            "--ping", "1",
            "--connect-retry", "1", "1",
            "--explicit-exit-notify", "1",
            "--disable-dco",
            "--verb", "3",
            *wrap_args(wrap, client.wrapping or sc.wrapping),
            *client.extra]
    if not client.good:     # (as client_argv's failing clients), then exit after its attempts
        argv += ["--server-poll-timeout", "1", "--connect-retry-max", str(client.attempts)]
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
    env = dict(os.environ, PYTHONPATH=str(CAPTURES.parent))
    argv = [sys.executable, "-m", "ovpndiag", "probe", "127.0.0.1", "-p", str(sc.port),
            "--tls-auth", sc.client.key, "--try-keys"]
    log.write("$ ovpndiag " + " ".join(argv[3:]) + "\n")
    log.flush()
    subprocess.run(argv, cwd=CAPTURES, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
