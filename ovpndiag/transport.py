"""Carry OpenVPN packets over ordinary sockets (no root): UDP datagrams, or TCP
with OpenVPN's 2-byte length framing.

A transport moves whole OpenVPN packets and turns socket trouble into
``TransportError`` subclasses that say what happened on the network. It knows
nothing of the protocol beyond the framing, so the probe today and the
userspace client later share it.
"""

import errno
import socket
import struct
import threading
import time
from typing import List, NamedTuple, Optional

from .protocol import plausible_tcp_frame

MAX_PACKET = 65535


class TransportError(Exception):
    """Something the network did; ``kind`` names it for verdicts."""

    kind = "error"


class Timeout(TransportError):
    kind = "timeout"


class Refused(TransportError):
    kind = "refused"


class Reset(TransportError):
    kind = "reset"


class Closed(TransportError):
    kind = "closed"


class Unreachable(TransportError):
    kind = "unreachable"


class NotOpenVPN(TransportError):
    """Bytes arrived that cannot be OpenVPN framing; ``data`` holds them."""

    kind = "not-openvpn"

    def __init__(self, message, data=b""):
        super().__init__(message)
        self.data = data


class Address(NamedTuple):
    family: int
    ip: str
    port: int

    def __str__(self):
        return f"[{self.ip}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.ip}:{self.port}"


def resolve(host: str, port: int, proto: str, family: Optional[int] = None) -> List[Address]:
    """Every address of ``host``, in the resolver's order, without duplicates.

    Raises ``socket.gaierror`` when the name does not resolve."""
    af = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family, socket.AF_UNSPEC)
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    seen, addresses = set(), []
    for found_family, _, _, _, sockaddr in socket.getaddrinfo(host, port, af, kind):
        address = Address(found_family, sockaddr[0], sockaddr[1])
        if address not in seen:
            seen.add(address)
            addresses.append(address)
    return addresses


def resolve_within(host: str, port: int, proto: str, family: Optional[int], timeout: float) -> List[Address]:
    """``resolve`` that gives up after ``timeout`` seconds: getaddrinfo itself
    cannot be interrupted, so it runs in a thread left behind if DNS hangs."""
    outcome = {}

    def work():
        try:
            outcome["addresses"] = resolve(host, port, proto, family)
        except Exception as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(max(timeout, 0))
    if worker.is_alive():
        raise Timeout(f"{host} did not resolve within {timeout:.1f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["addresses"]


def _os_error(error: OSError, what: str) -> TransportError:
    if error.errno == errno.ECONNREFUSED:
        return Refused(f"{what}: connection refused")
    if error.errno in (errno.ECONNRESET, errno.EPIPE):
        return Reset(f"{what}: connection reset by peer")
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return Unreachable(f"{what}: {error.strerror}")
    return TransportError(f"{what}: {error.strerror or error}")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("time is up")
    return left


class UDPTransport:
    """A connected UDP socket: the kernel passes on only datagrams from the
    address probed, and reports ICMP port unreachable as ECONNREFUSED."""

    proto = "udp"

    def __init__(self, address: Address):
        self.address = address
        self.sock = socket.socket(address.family, socket.SOCK_DGRAM)
        try:
            self.sock.connect((address.ip, address.port))
        except OSError as error:
            self.sock.close()
            raise _os_error(error, f"cannot send to {address}") from None

    @property
    def local(self):
        return self.sock.getsockname()[:2]

    def send(self, packet: bytes):
        try:
            self.sock.send(packet)
        except OSError as error:
            raise _os_error(error, f"sending to {self.address}") from None

    def receive(self, deadline: float) -> bytes:
        self.sock.settimeout(_remaining(deadline))
        try:
            return self.sock.recv(MAX_PACKET)
        except socket.timeout:
            raise Timeout(f"no datagram from {self.address}") from None
        except OSError as error:
            raise _os_error(error, f"receiving from {self.address}") from None

    def close(self):
        self.sock.close()


class TCPTransport:
    """A TCP connection carrying length-prefixed OpenVPN packets."""

    proto = "tcp"

    def __init__(self, address: Address, deadline: float):
        self.address = address
        self.sock = socket.socket(address.family, socket.SOCK_STREAM)
        self._buffer = b""
        try:
            self.sock.settimeout(_remaining(deadline))
            self.sock.connect((address.ip, address.port))
        except socket.timeout:
            self.sock.close()
            raise Timeout(f"no TCP connection to {address}") from None
        except OSError as error:
            self.sock.close()
            raise _os_error(error, f"connecting to {address}") from None
        except Timeout:
            self.sock.close()
            raise

    @property
    def local(self):
        return self.sock.getsockname()[:2]

    def send(self, packet: bytes):
        try:
            self.sock.sendall(struct.pack("!H", len(packet)) + packet)
        except OSError as error:
            raise _os_error(error, f"sending to {self.address}") from None

    def receive(self, deadline: float) -> bytes:
        """The next whole OpenVPN packet; raises NotOpenVPN as soon as the
        first bytes cannot be OpenVPN framing."""
        while True:
            if len(self._buffer) >= 3:
                length = struct.unpack("!H", self._buffer[:2])[0]
                if not plausible_tcp_frame(length, self._buffer[2]):  # (another protocol answered)
                    raise NotOpenVPN("the reply is not OpenVPN's TCP framing", self._buffer)
                if len(self._buffer) >= 2 + length:
                    packet, self._buffer = self._buffer[2:2 + length], self._buffer[2 + length:]
                    return packet
            self.sock.settimeout(_remaining(deadline))
            try:
                chunk = self.sock.recv(MAX_PACKET)
            except socket.timeout:
                raise Timeout(f"no complete reply from {self.address}") from None
            except OSError as error:
                raise _os_error(error, f"receiving from {self.address}") from None
            if not chunk:
                if self._buffer:
                    raise NotOpenVPN("the connection closed in the middle of a reply", self._buffer)
                raise Closed(f"{self.address} closed the connection without answering")
            self._buffer += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
