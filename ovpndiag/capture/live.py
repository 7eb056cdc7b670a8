"""Frames from a live interface, through an AF_PACKET socket (needs root or CAP_NET_RAW).

A cooked (SOCK_DGRAM) socket hands over the network-layer packet whatever the
interface's link type (Ethernet, loopback, tun), so every frame comes out as raw
IP (link type 101). As libpcap does, packets the loopback interface sends are
skipped: the same packet comes round again as received.
"""

import errno
import socket
import time
from typing import Iterator, Optional, Tuple

LINKTYPE_RAW = 101
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4


class LiveError(OSError):
    """The interface cannot be read; the message says why in one line."""


def open_interface(interface: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise LiveError(f"sniffing on {interface} needs root (or CAP_NET_RAW): run it with sudo") from None
    except (AttributeError, OSError) as error:
        raise LiveError(f"cannot open a packet socket: {getattr(error, 'strerror', None) or error}") from None
    try:
        sock.bind((interface, 0))
    except OSError as error:
        sock.close()
        if error.errno == errno.ENODEV:
            raise LiveError(f"no such interface: {interface}") from None
        raise LiveError(f"cannot listen on {interface}: {error.strerror or error}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def frames(sock: socket.socket, duration: Optional[float] = None,
           stop=lambda: False) -> Iterator[Tuple[int, float, int, bytes]]:
    """(number, time, linktype, packet) until ``duration`` seconds pass or ``stop()``."""
    deadline = None if duration is None else time.monotonic() + duration
    loopback = sock.getsockname()[0] == "lo"
    number = 0
    while not stop():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        sock.settimeout(0.25 if left is None else min(0.25, left))
        try:
            data, address = sock.recvfrom(65535)
        except socket.timeout:
            continue
        protocol, kind = address[1], address[2]
        if protocol not in (ETH_P_IP, ETH_P_IPV6) or (loopback and kind == PACKET_OUTGOING):
            continue
        number += 1
        yield number, time.time(), LINKTYPE_RAW, data
