"""Bind the OpenVPN layers to UDP and TCP port 1194, for Scapy sessions.

    >>> from ovpndiag.bindings import *      # in Scapy's shell, or a script
    >>> rdpcap("captures/udp-plain.pcap")[0].summary()

Port 1194 dissects whether it is the source or the destination port; over TCP
the packets come framed in ``OpenVPNTCP``. ``bind_port(443)`` adds another port.
Kept apart from ``ovpndiag.layers`` because importing Scapy's IP layers costs
time that code building and parsing OpenVPN packets does not need to pay.
"""

from scapy.layers.inet import TCP, UDP
from scapy.packet import bind_bottom_up, bind_layers

from .layers import *  # noqa: F401,F403 - re-exported for interactive use
from .layers import OpenVPN, OpenVPNTCP, __all__ as _layer_names

__all__ = list(_layer_names) + ["bind_port", "OPENVPN_PORT"]

OPENVPN_PORT = 1194


def bind_port(port: int):
    """Dissect UDP and TCP traffic to or from ``port`` as OpenVPN."""
    for transport, layer in ((UDP, OpenVPN), (TCP, OpenVPNTCP)):
        bind_bottom_up(transport, layer, dport=port)
        bind_bottom_up(transport, layer, sport=port)
        bind_layers(transport, layer, sport=port, dport=port)


bind_port(OPENVPN_PORT)
