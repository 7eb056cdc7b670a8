"""Key-method 2: the first message each side sends through TLS.

    uint32 0 | uint8 2 | key source | options | username | password | peer-info

A string is ``uint16 length (counting a trailing NUL) | bytes | NUL``; an absent
one is ``uint16 0``. The client's key source is ``pre_master(48) | random1(32) |
random2(32)``, the server's ``random1(32) | random2(32)``. The randoms feed
OpenVPN's PRF (datachannel.py) when the TLS exporter is not used.

peer-info is ``KEY=value`` lines: what the client is and supports (IV_PROTO's bits
below). The server decides from them whether to use DATA_V2, push without
waiting, export keys from TLS, and accept EXIT through the control channel.
"""

import os
import platform
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

KEY_METHOD_2 = 2
# IV_PROTO bits (OpenVPN 2.6 ssl.h)
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_AUTH_PENDING_KW = 1 << 4
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7
IV_PROTO_NAMES = {1 << 1: "DATA_V2", 1 << 2: "REQUEST_PUSH", 1 << 3: "TLS_KEY_EXPORT", 1 << 4: "AUTH_PENDING_KW",
                  1 << 5: "NCP_P2P", 1 << 6: "DNS_OPTION", 1 << 7: "CC_EXIT_NOTIFY", 1 << 8: "AUTH_FAIL_TEMP",
                  1 << 9: "DYN_TLS_CRYPT", 1 << 10: "DATA_EPOCH"}
IV_VER = "2.6.14"  # what we speak: 2.6's protocol (servers look at IV_PROTO, IV_VER is for their logs)
MAX_STRING = 4096


class KeyMethodError(ValueError):
    """The server's key-method message cannot be read."""


@dataclass
class KeyExchange:
    """Both sides' key sources (secret: never printed; repr hides them)."""

    client_pre_master: bytes = field(default_factory=lambda: os.urandom(48), repr=False)
    client_random1: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    client_random2: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    server_random1: Optional[bytes] = field(default=None, repr=False)
    server_random2: Optional[bytes] = field(default=None, repr=False)


@dataclass
class ServerKeyMessage:
    options: str
    username: str = ""
    peer_info: Dict[str, str] = field(default_factory=dict)
    length: int = 0


def peer_info(ciphers: List[str], proto: str, key_export: bool, gui_version: str = "") -> Dict[str, str]:
    """What an OpenVPN 2.6 client announces (ours: no compression, no DCO, no dyn-tls-crypt)."""
    bits = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_AUTH_PENDING_KW | IV_PROTO_CC_EXIT_NOTIFY
    if key_export:
        bits |= IV_PROTO_TLS_KEY_EXPORT
    info = {"IV_VER": IV_VER, "IV_PLAT": _platform(), "IV_PROTO": str(bits), "IV_NCP": "2",
            "IV_CIPHERS": ":".join(ciphers), "IV_MTU": "1600"}
    if proto == "tcp":
        info["IV_TCPNL"] = "1"
    if gui_version:
        info["IV_GUI_VER"] = gui_version
    return info


def _platform():
    system = platform.system().lower()
    return {"darwin": "mac", "windows": "win"}.get(system, system or "linux")


def options_string(proto: str, family: int = 4, tls_auth: bool = False) -> str:
    """The old options-consistency string (2.6 servers only log differences)."""
    transport = {"udp": "UDPv4", "tcp": "TCPv4_CLIENT"}[proto]
    if family == 6:
        transport = transport.replace("v4", "v6")
    parts = ["V4", "dev-type tun", "link-mtu 1549", "tun-mtu 1500", f"proto {transport}", "keydir 1" if tls_auth
             else None, "auth [null-digest]", "keysize 0", "tls-auth" if tls_auth else None, "key-method 2",
             "tls-client"]
    return ",".join(p for p in parts if p)


def _string(text: Optional[str]) -> bytes:
    if text is None:
        return struct.pack("!H", 0)
    data = text.encode() + b"\0"
    return struct.pack("!H", len(data)) + data


def client_message(keys: KeyExchange, options: str, username: Optional[str], password: Optional[str],
                   info: Dict[str, str]) -> bytes:
    """Our key-method-2 message. Without --auth-user-pass the username and
    password are empty strings, as OpenVPN sends them."""
    peer = "".join(f"{k}={v}\n" for k, v in info.items())
    return (struct.pack("!IB", 0, KEY_METHOD_2) + keys.client_pre_master + keys.client_random1
            + keys.client_random2 + _string(options) + _string(username or "") + _string(password or "")
            + _string(peer))


def parse_server_message(data: bytes) -> ServerKeyMessage:
    """The server's key-method-2 message (one TLS record)."""
    if len(data) < 5 + 64:
        raise KeyMethodError(f"{len(data)} bytes is too short for a key-method 2 message")
    zero, method = struct.unpack("!IB", data[:5])
    if zero != 0 or method != KEY_METHOD_2:
        raise KeyMethodError(f"not a key-method 2 message (starts {data[:5].hex()})")
    offset = 5 + 64
    strings = []
    while offset + 2 <= len(data) and len(strings) < 4:
        length = struct.unpack("!H", data[offset:offset + 2])[0]
        offset += 2
        if length > MAX_STRING or offset + length > len(data):
            raise KeyMethodError(f"a string of {length} bytes runs past the message's {len(data)} bytes")
        strings.append(data[offset:offset + length].rstrip(b"\0").decode("utf-8", "replace"))
        offset += length
    if not strings:
        raise KeyMethodError("no options string in the server's key-method 2 message")
    info = {}
    if len(strings) >= 4:
        for line in strings[3].splitlines():
            key, _, value = line.partition("=")
            if key:
                info[key] = value
    return ServerKeyMessage(options=strings[0], username=strings[1] if len(strings) > 1 else "", peer_info=info,
                            length=len(data))


def server_randoms(data: bytes):
    return data[5:37], data[37:69]


def iv_proto_names(bits: int) -> List[str]:
    return [name for bit, name in IV_PROTO_NAMES.items() if bits & bit]
