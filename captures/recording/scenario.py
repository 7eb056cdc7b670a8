"""The rows of record.py's scenario table, and how long scenarios run."""

from __future__ import annotations

from dataclasses import dataclass, field

CONNECT_TIMEOUT = 20.0      # seconds to wait for "Initialization Sequence Completed"
KEEPALIVE_SECONDS = 3.0     # how long to let pings flow after connecting
FAIL_SECONDS = 4.5          # how long to record a failing handshake
RENEG_SECONDS = 3           # client --reneg-sec for the renegotiation scenarios
RENEG_TIMEOUT = 15.0
RELAY_PORT = 11194          # where the UDP relay listens for the floating client (not captured)
BUSY_STAY_SECONDS = 6.0     # how long a busy scenario's good client stays connected
BUSY_ATTEMPT_TIMEOUT = 20.0 # a busy client that neither connects nor fails again by then is an error
BUSY_TAIL_SECONDS = 11.0    # capture after the last busy client: the server's last keepalives to a
                            # leaving client (5 s) and then 5 s of quiet (analyze's sign that a session stopped)


@dataclass
class Side:
    """One peer's wrapping settings (what goes into the manifest)."""
    key: str | None = None              # key file relative to captures/
    auth: str | None = None             # --auth digest when tls-auth is used
    key_direction: int | None = None    # tls-auth key direction, None = bidirectional/none


@dataclass
class BusyClient:
    """One of a busy scenario's clients, bound to its own port (``--lport``) so the manifest
    can say per port what its sessions must get. A good client stays BUSY_STAY_SECONDS once
    connected; a failing one is stopped once it failed ``attempts`` times (each attempt is a
    new session: a new session id from the same port)."""
    port: int
    kind: str                           # what is wrong with it ("good", "wrong-key", ...)
    start: float                        # seconds after the server is up
    verdict: str                        # what `ovpndiag analyze` must say without keys ...
    verdict_with_keys: str              # ... and given the server's key, digest and key-direction
    wrap: Side | None = None            # its wrapping (None: the scenario's client side)
    wrapping: str | None = None         # "none" for a client without tls-auth (None: the scenario's)
    cert: str = "client"                # basename of its cert/key in keys/
    extra: list[str] = field(default_factory=list)
    attempts: int = 1                   # sessions it makes
    client_log_expect: str = r"Initialization Sequence Completed"  # regex its own log must match
    server_log_expect: str | None = None  # regex the server log must match ({port}: its port)

    @property
    def good(self) -> bool:
        return self.kind == "good"


@dataclass
class Scenario:
    name: str
    transport: str                      # "udp" | "tcp"
    family: int                         # 4 | 6
    port: int
    wrapping: str                       # "none" | "tls-auth" | "tls-crypt" | "tls-crypt-v2"
    server: Side
    client: Side
    outcome: str                        # "connected" | "failed" | "answered" (probe) | "mixed" (busy)
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
                                        # "handshake": server + `ovpndiag handshake --keylog` (recording/handshake.py) |
                                        # "busy": one server and the many ``clients``
    capture_start: str = "handshake"    # "handshake": before the server starts | "mid-session": once connected
    float_client: bool = False          # client talks through relay_udp(), which changes its source port mid-session
    flood: int = 0                      # ping -f -c FLOOD -s 0 through the tunnel (capture size: small pings)
    min_packets: int = 0                # the capture must hold more OpenVPN packets than this
    # Failures recorded for `ovpndiag analyze` (group "failures"):
    verdict: str | None = None          # the verdict (ovpndiag/verdicts.py) the capture must get
    server_cert: str = "server"         # basename of the server's cert/key in keys/
    server_answers: bool = False        # a failed handshake where the server still answers the reset
    # Many clients against one server (kind "busy", group "busy"):
    clients: list[BusyClient] = field(default_factory=list)

    @property
    def data_channel(self) -> bool:
        return self.outcome in ("connected", "mixed")

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
    """A capture re-encapsulated from a real one into a link type Linux cannot record, or
    (``start_seconds``) cut from a real one as if tcpdump had been started later."""
    name: str
    source: str                         # scenario whose capture is converted
    linktype: int
    big_endian: bool
    how: str                            # for the README and manifest
    start_seconds: float | None = None  # a cut: only the frames from this many seconds on (same link type)

    @property
    def file(self) -> str:
        return f"{self.name}.pcap"
