"""OpenVPN traffic in captures: which flows are OpenVPN, how each is wrapped,
what each packet says, and the TLS inside the control channel."""
