"""ovpndiag: packet-level OpenVPN diagnostics.

Kept empty of imports on purpose: ``ovpndiag --version`` and a monitoring check
must not pay for loading Scapy or cryptography before they need them.
"""

__version__ = "0.1.0"
