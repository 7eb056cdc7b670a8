"""Where a scenario's peers talk: loopback, or two network namespaces joined by a veth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .procs import Procs
from .scenario import Scenario

RELAYS = Path(__file__).resolve().parent / "relays.py"   # run as a script of its own


def start_relay(procs: Procs, kind: str, args: list[str], ns: str | None = None) -> subprocess.Popen:
    """Start relays.py (``kind`` "vlan" or "udp"), in namespace ``ns`` if given, and wait
    for its "ready"."""
    argv = [sys.executable, str(RELAYS), kind, *args]
    relay = procs.start(f"{kind} relay", ["ip", "netns", "exec", ns, *argv] if ns else argv,
                        stdout=subprocess.PIPE, text=True)
    if relay.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{kind} relay did not start")
    return relay


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Net:
    """Where a scenario's peers talk and where the capture is taken.

    "lo": both peers on loopback in this namespace (the original captures). Otherwise the
    server and the client each get a private network namespace, joined by a veth pair:
    "veth" with the scenario's MTU and addresses 10.77.N.1/.2 (fd77:N::1/2 for IPv6);
    "vlan" with the addresses on TAP devices whose frames relays.vlan_relay() carries over the
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
            self.relay = start_relay(procs, "vlan", [
                f"{self.server_ns}:{self.taps[0]}:{self.link[0]}",
                f"{self.client_ns}:{self.taps[1]}:{self.link[1]}", "--tags", tags])
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
