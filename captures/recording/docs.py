"""manifest.json and README.md: what the recorded captures are, for tests and for people."""

from __future__ import annotations

import json
import subprocess
import sys

from .layout import CAPTURES, Layout
from .pcapfile import read_pcap
from .scenario import FAIL_SECONDS, KEEPALIVE_SECONDS, RENEG_SECONDS, Derived, Scenario


def manifest_entry(sc: Scenario) -> dict:
    entry = {
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
                    "probe": "ovpndiag probe --try-keys",
                    "no-server": "openvpn (client only)",
                    "handshake": "ovpndiag handshake --keylog"}.get(sc.kind, sc.kind),
        "capture_start": sc.capture_start,
        "float": sc.float_client,
    }
    if sc.group in ("failures", "keylog"):  # what `ovpndiag analyze` must say, and what made it so
        entry.update(verdict=sc.verdict, server_cert=f"keys/{sc.server_cert}.crt",
                     client_cert=f"keys/{sc.client_cert}.crt",
                     server_options=sc.server_extra, client_options=sc.client_extra)
    if sc.kind == "handshake":          # the NSS key log of the capture's TLS session (recording/handshake.py)
        entry["keylog"] = f"{sc.name}.keys"
    if sc.kind == "busy":               # per client port, then (busy_entry) per session
        from .openvpn import wrap_args

        entry.update(server_options=sc.server_extra, clients=[
            {"client_port": c.port, "client": c.kind, "sessions": c.attempts,
             "verdict": c.verdict, "verdict_with_keys": c.verdict_with_keys,
             "client_cert": f"keys/{c.cert}.crt",
             "client_options": wrap_args(c.wrap or sc.client, c.wrapping or sc.wrapping) + c.extra}
            for c in sc.clients])
    return entry


def derived_entry(d: Derived, source: Scenario, layout: Layout = Layout()) -> dict:
    entry = manifest_entry(source)
    entry.update(file=d.file, linktype=d.linktype, captured=f"derived by derive.py from {d.how}",
                 derived_from=source.file,
                 description=source.description + " Re-encapsulated (derive.py): " + d.how + ".")
    if d.start_seconds is not None:
        entry.update(capture_start="mid-session", cut_seconds=d.start_seconds,
                     description=source.description + " Cut (derive.py): " + d.how + ".")
        entry.pop("clients", None)      # (a client's sessions before the cut are gone)
    if source.kind == "busy":
        from .busy import expected_sessions

        entry["sessions"] = expected_sessions(layout.out / source.file, source, d.start_seconds)
    return entry


def busy_entry(sc: Scenario, layout: Layout) -> dict:
    """A busy scenario's manifest entry, with the verdict of each session in its capture."""
    from .busy import expected_sessions

    return dict(manifest_entry(sc), sessions=expected_sessions(layout.out / sc.file, sc))


def make_derived(d: Derived, source: Scenario, layout: Layout = Layout()) -> int:
    """Convert the source capture; returns the number of frames."""
    sys.path.insert(0, str(CAPTURES))
    from derive import cut, derive

    if d.start_seconds is not None:
        return cut(layout.out / source.file, layout.out / d.file, d.start_seconds)
    return derive(layout.out / source.file, layout.out / d.file, d.linktype, d.big_endian)


README_HEAD = """\
# captures/ - real OpenVPN 2.6 traffic for ovpndiag's tests

Every capture here was recorded between a real OpenVPN server and a real OpenVPN client - two
separate `openvpn` processes with their own tun devices - by `record.py`, most on loopback
(`tcpdump -i lo -s 0 -U`, classic pcap, linktype Ethernet, talking over 127.0.0.1 or ::1).
The "capture" column says where the others were taken: `tcpdump -i any` (Linux cooked
headers), `dumpcap` (pcapng), or a veth pair between two private network namespaces (addresses
10.77.N.1/.2 or fd77:N::1/2) - with a small MTU for IP fragments, with VLAN tags on the link
(added and removed by a small relay, `recording/relays.py`, acting as the VLAN-aware switch ports,
because this kernel has no 802.1Q devices; the frames on the veth are really tagged), or with
the session running inside an outer OpenVPN tunnel and captured on its tun device (raw IP; the
outer tunnel's logs are `logs/NAME.outer-*.log`). Recorded with: `{version}`.

Three files are **derived**, not recorded: `derive.py` re-encapsulates a real Ethernet capture
into BSD loopback link types (DLT_NULL, DLT_LOOP) that Linux cannot capture, keeping every
IP packet and timestamp, or cuts one to start later (`busy-mixed-cut`); `derived_from` in the
manifest names the source.

* `manifest.json` - one object per capture (transport, address family, port, wrapping, the
  tls-auth digest / key file / key-direction of the server and, under `client`, of the client,
  expected outcome, renegotiation, data channel; file `format`, `linktype`, how it was
  `captured`, `vlan` ids, whether it holds IP fragments, `derived_from`; `group` "basic",
  "real-world", "failures", "keylog" or "busy", the client `program`, `capture_start` "handshake"
  or "mid-session", `float`; per group, the verdicts analyze must give - see below).
  Key paths are relative to this folder.
* `logs/NAME.server.log`, `logs/NAME.client.log` - both peers' `--verb 3` logs for each capture
  (for `udp-try-keys` the client log is the probe's output; `logs/udp-float.relay.log` is the NAT's).
  Failure reasons ("packet HMAC authentication failed", "cannot locate HMAC in incoming
  packet", "tls-crypt unwrap error", "VERIFY ERROR") are only visible there.
* `keys/` - the **test-only, publicly known** PKI and static keys the captures were made with
  (see `keys/README.md`). Never use them for anything real.
* `record.py` - the script that made all of this: the scenario table and its command line;
  `recording/` - how (test PKI, processes, namespaces and relays, checks, these documents);
  `derive.py` - the re-encapsulation.

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
    sudo python3 captures/record.py --out /tmp/again NAME...   # elsewhere, to compare

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
* `udp-float`: the client talks to a small UDP relay in its own namespace (`recording/relays.py
  udp`), which forwards to the server from its own socket and, on SIGUSR1, from a new one
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

## Failures for `ovpndiag analyze` (`group` "failures")

One capture per way a handshake fails that the captures above lack, each with the verdict
(`ovpndiag/verdicts.py`) it must get in its manifest entry (`verdict`), plus `server_cert`,
`client_cert` and the extra `server_options`/`client_options` that made it fail:

* Where TLS 1.2 is forced (`--tls-version-max 1.2` on the client) the certificates cross in
  clear. OpenVPN 2.6 logs "Sent fatal SSL alert: ..." on the refusing side, but the alert never
  reaches the wire in these captures: the refusing peer drops the session (the client restarts,
  the server forgets it) before sending it. What the wire shows is who stopped answering after what.
* `fail-auth-failed` and `fail-no-shared-cipher` run TLS 1.3: the AUTH_FAILED is inside TLS, only
  its length shows (76 and 134 bytes), and it is retransmitted because the exiting client never
  ACKs it. The AUTH_FAILED comes from `--auth-user-pass-verify /bin/false via-env` (the client's
  credentials are `keys/user-pass.txt`).
* `fail-port-closed`: no server at all; tcpdump's filter is `port 1194 or icmp`, so each reset's
  ICMP port unreachable (which quotes the reset) is in the capture. `fail-port-closed-tcp` is
  the same over TCP: each connection attempt's SYN is answered by RST (no ICMP, no payload).
* `fail-client-cert-untrusted-tcp-tls12`: over TCP the server closes the connection (FIN) right
  after the client's clear Certificate flight, without ACKing it and without an alert on the wire.
* `fail-expired-server-cert-tls13`: the client ACKs only the first packet of the server's TLS 1.3
  flight (Server Hello and the start of the encrypted rest); reading the second it finds the
  certificate expired, logs "Sent fatal SSL alert: certificate expired" - none on the wire - and
  starts over from a new port, while the server retransmits the unacknowledged packet to the old one.

## Decryptable with a key log (`group` "keylog")

The client of these is `ovpndiag handshake --keylog NAME.keys` from this checkout (kind "handshake",
`recording/handshake.py`) against a real OpenVPN 2.6 server on ports 3194-3199, so each capture comes
with the NSS key log of its TLS session (`keylog` in the manifest; throw-away test sessions). Wireshark
decrypts them with `-o tls.keylog_file:NAME.keys -d udp.port==3194,openvpn`, `ovpndiag analyze
--keylog NAME.keys` reads what OpenVPN says inside (key-method 2, PUSH_REPLY, AUTH_FAILED, alerts,
TLS 1.3 certificates). The client log is the handshake's report.

* `keylog-client-cert-rejected`: under TLS 1.3 the client's certificate is encrypted (the key log shows
  it: the rogue CA's). The server logs "Sent fatal SSL alert: unknown CA", but no alert reaches the
  wire, not even encrypted: after the client's Certificate, CertificateVerify, Finished and key-method 2
  message the server sends nothing more for the session (no ACK).
* `keylog-tls12-cbc`: a CBC suite, which ovpndiag does not decrypt (it says so); the other TLS 1.2
  captures use AES-256-GCM and CHACHA20-POLY1305.

## A busy server (`group` "busy")

`busy-mixed`: one server and 22 real clients at once (`kind` "busy", `recording/busy.py`), each
bound to its own port (`--lport 20001..20022 --bind`, so a client's reconnects come from the
same port with a new session id), without tun devices (`--dev null`; the `--ping 1` keepalives
are the data). A good client stays 6 s and leaves with `--explicit-exit-notify` (an EXIT inside
TLS); the server still sends it keepalives for ~5 s after ("Delayed exit in 5 seconds"), so every
good session ends with a few seconds of data one way (its verdict is still `ok`: data flowed both
ways before). A failing client exits after 3 attempts
(`--connect-retry-max 3`; the wrong-password ones are stopped in their restart pause). Their
logs are one after the other in `logs/busy-mixed.client.log`. In the manifest:

* `clients`: per client port, its `client` kind, `sessions` (how many it made), `verdict` (what
  `ovpndiag analyze` must say about each of them without keys), `verdict_with_keys` (given the
  server's key, digest and key-direction: `key`, `auth`, `server_key_direction`), `client_cert`
  and `client_options` (its wrapping and extra options);
* `sessions`: one object per session in order of its first packet: `client_port`, `client`,
  `session_id` and `server_session_id` (hex; `null` where the server never answered),
  `first_frame`, `packets`, `verdict`, `verdict_with_keys`.

A wrong-password client waits 6 s between attempts: the server ignores a new reset from the same
address and port for 5 s after an AUTH_FAILED (the old instance is exiting), so quicker retries
would be unanswered sessions with a valid HMAC.

`busy-mixed-cut` is derived (`derive.py --from-seconds 13`): the frames from 13 s in, as if tcpdump
had been started then (`cut_seconds`, `capture_start` "mid-session"). Its `sessions` say what analyze
must say there: a session whose hard resets are all before the cut is `ok` if data still flows both
ways after it, otherwise `incomplete` (how it started, and so why it failed, is not in the capture);
the others keep their verdicts. Frames are counted in the cut file.

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


def write_docs(scenarios: list[Scenario], derived: list[Derived], layout: Layout = Layout()) -> None:
    """Describe the captures of ``scenarios`` and ``derived`` that are in ``layout.out``."""
    by_name = {sc.name: sc for sc in scenarios}
    present = [sc for sc in scenarios if (layout.out / sc.file).exists()]
    derived = [d for d in derived if (layout.out / d.file).exists()]
    layout.manifest.write_text(json.dumps(
        [busy_entry(sc, layout) if sc.kind == "busy" else manifest_entry(sc) for sc in present] +
        [derived_entry(d, by_name[d.source], layout) for d in derived], indent=2) + "\n")
    rows = []
    for sc, d in [(sc, None) for sc in present] + [(by_name[d.source], d) for d in derived]:
        file = d.file if d else sc.file
        n = len(read_pcap(layout.out / file))
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
            if sc.client.key is None:
                wrapping += f" {sc.server.auth}, key-dir {kd(sc.server)} on the server; the client has none"
            elif sc.server.auth == sc.client.auth and sc.server.key == sc.client.key:
                wrapping += f" {sc.server.auth}, key-dir {kd(sc.server)}/{kd(sc.client)}"
            else:
                wrapping += (f" server {sc.server.auth} {sc.server.key} dir {kd(sc.server)}, "
                             f"client {sc.client.auth} {sc.client.key} dir {kd(sc.client)}")
        elif sc.server.key != sc.client.key and sc.wrapping == "tls-crypt":
            wrapping += f" (client {sc.client.key})"
        elif sc.wrapping == "tls-crypt-v2" and sc.client.key != "keys/tcv2-client.key":
            wrapping += f" (client {sc.client.key})"
        if d and d.start_seconds is not None:
            capture = "derived (cut)"
            text = f"Cut from `{sc.file}`: {d.how}."
        elif d:
            capture = f"derived (link type {d.linktype})"
            text = f"Derived from `{sc.file}`: {d.how}."
        else:
            capture = f"`{sc.captured}`" if sc.net == "lo" else sc.captured
            text = f"{sc.description} Shows {sc.shows}."
        rows.append(f"| `{file}` | {tp} | {wrapping} | {sc.outcome} | {n} | {capture} | {text} |")
    layout.readme.write_text(README_HEAD.format(version=openvpn_version(), fail=FAIL_SECONDS,
                                         keep=KEEPALIVE_SECONDS, reneg=RENEG_SECONDS) + "\n".join(rows) + "\n")
