"""OpenVPN for Scapy users, in one import: what ``load_contrib("openvpn")`` would load.

    >>> from ovpndiag.scapy_contrib import *
    >>> packets = rdpcap("captures/udp-tls-auth-sha256.pcap")
    >>> packets[0][OpenVPN].hmac                  # tls-auth inferred: no setting needed

The import binds the layers to UDP and TCP port 1194 (``bind([443])`` adds ports)
and fills in ``conf.contribs["openvpn"]`` (values set before the import are kept):
``{"wrapping": "auto", "tls": False}`` - see ``ovpndiag.layer_settings`` for what
each setting accepts.

Scapy's own ``load_contrib(name)`` imports ``scapy.contrib.<name>`` only. Scapy 2.6+
can map such a name to another package's module (``conf.exts.load(distribution)``),
but only for distributions licensed GPL-2.0; ovpndiag is MIT-licensed, so Scapy
refuses it and this import is the one-liner instead.
"""

from scapy.config import conf

from .bindings import *  # noqa: F401,F403 - the layers and bind(), for interactive use
from .bindings import __all__ as _binding_names
from .layer_settings import install_defaults
from .protocol import Wrapping

__all__ = list(_binding_names) + ["Wrapping"]

install_defaults(conf.contribs)
