"""-x: the OpenVPN bytes of a packet as ``tshark -x`` prints bytes: offset, 16 bytes
in hex, the same as ASCII (``.`` for what does not print)."""

_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))


def hexdump(data: bytes) -> str:
    """``0000  38 12 e3 51 ...   8..Q...`` lines, 16 bytes each."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        lines.append("%04x  %-47s   %s" % (offset, chunk.hex(" "), chunk.translate(_PRINTABLE).decode("ascii")))
    return "\n".join(lines)


def packet_dump(data: bytes, decrypted: bytes = None, wrapping=None) -> str:
    """The packet's bytes as captured; when a key opened it (tls-crypt), the same packet
    with its plaintext in place follows, headed as tshark heads a second data source."""
    data = data or b""
    if decrypted is None or decrypted == data:
        return hexdump(data)
    kind = getattr(wrapping, "kind", "tls-crypt")
    return (f"OpenVPN packet ({len(data)} bytes):\n{hexdump(data)}\n"
            f"Decrypted {kind} ({len(decrypted)} bytes):\n{hexdump(decrypted)}")
