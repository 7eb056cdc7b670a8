"""The rows of record.py's scenario table, and how long scenarios run."""

from __future__ import annotations

from dataclasses import dataclass, field

CONNECT_TIMEOUT = 20.0      # seconds to wait for "Initialization Sequence Completed"
KEEPALIVE_SECONDS = 3.0     # how long to let pings flow after connecting
FAIL_SECONDS = 4.5          # how long to record a failing handshake
RENEG_SECONDS = 3           # client --reneg-sec for the renegotiation scenarios
RENEG_TIMEOUT = 15.0
RELAY_PORT = 11194          # where the UDP relay listens for the floating client (not captured)


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
    client_log_expect: str | None = None  # regex the client log must match (failures)
    client_extra: list[str] = field(default_factory=list)
    server_extra: list[str] = field(default_factory=list)
    # Where the peers talk and how the capture is taken (see netns.Net):
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
                                        # "probe": server + `ovpndiag probe --try-keys` |
                                        # "no-server": a client and nothing listening on the port |
                                        # "handshake": server + `ovpndiag handshake --keylog` (recording/handshake.py)
    capture_start: str = "handshake"    # "handshake": before the server starts | "mid-session": once connected
    float_client: bool = False          # client talks through relay_udp(), which changes its source port mid-session
    flood: int = 0                      # ping -f -c FLOOD -s 0 through the tunnel (capture size: small pings)
    min_packets: int = 0                # the capture must hold more OpenVPN packets than this
    # Failures recorded for `ovpndiag analyze` (group "failures"):
    verdict: str | None = None          # the verdict (ovpndiag/verdicts.py) the capture must get
    server_cert: str = "server"         # basename of the server's cert/key in keys/
    server_answers: bool = False        # a failed handshake where the server still answers the reset

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
