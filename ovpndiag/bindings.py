"""Bind the OpenVPN layers to UDP and TCP ports, for Scapy sessions.

Port 1194 is bound on import; ``bind(ports)`` (or ``bind_port(443)``) adds more.
A port dissects as OpenVPN whether it is the source or the destination port; over
TCP the packets come framed in ``OpenVPNTCP``. Scapy users import
``ovpndiag.scapy_contrib`` (this, plus the ``conf.contribs["openvpn"]`` settings).
Kept apart from ``ovpndiag.layers`` because importing Scapy's IP layers costs
time that code building and parsing OpenVPN packets does not need to pay.
"""

from typing import Iterable

from scapy.layers.inet import TCP, UDP
from scapy.packet import bind_bottom_up, bind_layers, split_bottom_up

from .layers import *  # noqa: F401,F403 - re-exported for interactive use
from .layers import OpenVPN, OpenVPNTCP, __all__ as _layer_names

__all__ = list(_layer_names) + ["bind", "bind_port", "OPENVPN_PORT"]

OPENVPN_PORT = 1194


def bind_port(port: int):
    """Dissect UDP and TCP traffic to or from ``port`` as OpenVPN.

    Scapy takes the first layer bound to a port, so a layer that claimed the port
    before (Scapy's TLS claims TCP 443 when it loads) is unbound from it first."""
    for transport, layer in ((UDP, OpenVPN), (TCP, OpenVPNTCP)):
        for fields, other in list(transport.payload_guess):
            if other is not layer and fields in ({"dport": port}, {"sport": port}):
                split_bottom_up(transport, other, **fields)
        bind_bottom_up(transport, layer, dport=port)
        bind_bottom_up(transport, layer, sport=port)
        bind_layers(transport, layer, sport=port, dport=port)


def bind(ports: Iterable[int] = ()):
    """Dissect UDP and TCP port 1194 and ``ports`` as OpenVPN."""
    for port in (OPENVPN_PORT, *ports):
        bind_port(port)


bind()
