"""``ovpndiag analyze``: why each captured OpenVPN handshake failed, session by session."""
