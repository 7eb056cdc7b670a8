"""Frames from a live interface, through a kernel ring buffer (needs root or CAP_NET_RAW).

An AF_PACKET socket with a PACKET_MMAP ring (TPACKET_V3), as libpcap uses on Linux:
the kernel writes packets into blocks of a ring shared with this process, and hands
a block over when it is full or ``BLOCK_TIMEOUT_MS`` after its first packet. Python
then reads a whole block per wake-up instead of a system call per packet, and the
ring (``--buffer``) absorbs what Python cannot read at once. An in-kernel BPF filter
lets only IPv4/IPv6 UDP and TCP (and IP fragments) into the ring, so a busy
interface's other traffic is never copied to user space. As libpcap does, packets
the loopback interface sends are left out (the same packet comes round again as
received) - here in the filter, so the kernel's counts stay exact.

A cooked (SOCK_DGRAM) socket hands over the network-layer packet whatever the
interface's link type (Ethernet, loopback, tun), so every frame comes out as raw
IP (link type 101).

Nothing is lost without being counted: the kernel counts every packet the filter
let in and every one it dropped because the ring was full (PACKET_STATISTICS).
``stop()`` (from a signal handler: it only sets a flag) closes the filter and lets
the reader drain what the ring already holds; ``abandon()`` stops at once, and the
packets left unread are counted too (``Stats.unread``).
"""

import ctypes
import errno
import mmap
import select
import socket
import struct
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple

LINKTYPE_RAW = 101
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION, TPACKET_V3 = 263, 5, 6, 10, 2
SO_ATTACH_FILTER = 26
TP_STATUS_USER = 1

BLOCK_SIZE = 1 << 18            # 256 KiB: holds the largest packet loopback offloads (64 KiB)
BLOCK_TIMEOUT_MS = 100          # a block with any packet is handed over at the latest this late
DEFAULT_BUFFER_MIB = 64
ARPHRD_LOOPBACK = 772

Frame = Tuple[int, float, int, bytes]   # (number from 1, epoch seconds, LINKTYPE_RAW, IP packet)

_block_header = struct.Struct("<III").unpack_from           # block_status, num_pkts, offset_to_first_pkt
_packet_header = struct.Struct("<IIII10xH").unpack_from     # next offset, sec, nsec, snaplen, tp_net
_ring_request = struct.Struct("<7I").pack                    # struct tpacket_req3
_statistics = struct.Struct("<III")                         # struct tpacket_stats_v3


class LiveError(OSError):
    """The interface cannot be read; the message says why in one line."""


class Stats(NamedTuple):
    received: int   # packets the filter let in (dropped ones included)
    dropped: int    # of those, dropped by the kernel: the ring was full
    unread: int     # in the ring, never read: the capture was abandoned (or stopped early, e.g. -c)


# Classic BPF (struct sock_filter: code, jt, jf, k) run by the kernel on each packet.
# On a cooked socket the network header is at offset 0; ancillary loads read the
# packet's protocol and direction.
_LDH_ABS, _LDB_ABS, _JEQ, _JA, _RET = 0x28, 0x30, 0x15, 0x05, 0x06
_AD_PROTOCOL, _AD_PKTTYPE = 0xFFFFF000, 0xFFFFF004
_IPV4_PROTOCOLS = (6, 17)                                  # TCP, UDP (fragments carry theirs too)
_IPV6_NEXT = (6, 17, 44, 0, 43, 60, 51, 135, 139, 140)      # TCP, UDP, fragment, extension headers


def _filter_program(loopback: bool, user=()) -> List[Tuple[int, int, int, int]]:
    """Accept IPv4/IPv6 packets carrying UDP or TCP, whole; reject everything else. With
    ``user`` (a compiled capture filter, -f) those packets go on to it instead of being accepted."""
    program = []
    if loopback:
        program += [(_LDB_ABS, 0, 0, _AD_PKTTYPE), (_JEQ, "reject", 0, PACKET_OUTGOING)]
    program += [(_LDH_ABS, 0, 0, _AD_PROTOCOL),
                (_JEQ, "ipv4", 0, ETH_P_IP),
                (_JEQ, 0, "reject", ETH_P_IPV6),
                (_LDB_ABS, 0, 0, 6)]
    program += [(_JEQ, "accept", 0, value) for value in _IPV6_NEXT]
    program += [(_JA, 0, 0, "reject"), ("label", "ipv4"), (_LDB_ABS, 0, 0, 9)]
    program += [(_JEQ, "accept", 0, value) for value in _IPV4_PROTOCOLS]
    program += [("label", "reject"), (_RET, 0, 0, 0), ("label", "accept")]
    # The user's program (its jumps are relative: they stay right), each packet it accepts taken whole.
    program += [(op, jt, jf, 0xFFFFFFFF if op & 0x07 == _RET and k else k) for op, jt, jf, k in user] \
        or [(_RET, 0, 0, 0xFFFFFFFF)]
    return _assemble(program)


class CaptureFilterError(ValueError):
    """A capture filter (-f) that libpcap cannot compile; the message is one line."""


DLT_RAW = 12  # libpcap's raw IP: the network header at offset 0, as on this cooked socket


def compile_capture_filter(expression: str) -> List[Tuple[int, int, int, int]]:
    """A pcap-filter(7) expression as classic BPF for raw IP packets: by libpcap itself
    (ctypes, pcap_compile on a dead handle), or by ``tcpdump -ddd`` where libpcap cannot be loaded."""
    import ctypes.util

    name = ctypes.util.find_library("pcap")
    try:
        pcap = ctypes.CDLL(name or "libpcap.so.0.8")
    except OSError:
        return _tcpdump_compile(expression)

    class Program(ctypes.Structure):
        _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]

    pcap.pcap_open_dead.restype = ctypes.c_void_p
    pcap.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    pcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(Program), ctypes.c_char_p, ctypes.c_int,
                                  ctypes.c_uint32]
    pcap.pcap_geterr.restype = ctypes.c_char_p
    pcap.pcap_geterr.argtypes = [ctypes.c_void_p]
    pcap.pcap_freecode.argtypes = [ctypes.POINTER(Program)]
    pcap.pcap_close.argtypes = [ctypes.c_void_p]
    handle = pcap.pcap_open_dead(DLT_RAW, 262144)
    if not handle:
        return _tcpdump_compile(expression)
    program = Program()
    try:
        if pcap.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            raise CaptureFilterError(f"bad capture filter '{expression}': "
                                     f"{pcap.pcap_geterr(handle).decode(errors='replace')}")
        code = ctypes.string_at(program.bf_insns, program.bf_len * 8)
        pcap.pcap_freecode(ctypes.byref(program))
    finally:
        pcap.pcap_close(handle)
    return [struct.unpack_from("<HBBI", code, offset) for offset in range(0, len(code), 8)]


def _tcpdump_compile(expression):
    """``tcpdump -ddd`` over an empty raw-IP capture (its link type is the file's)."""
    import os
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
        empty.flush()
        try:
            done = subprocess.run(["tcpdump", "-r", empty.name, "-ddd", expression], capture_output=True,
                                  text=True, env={**os.environ, "LC_ALL": "C"})
        except OSError:
            raise CaptureFilterError("-f needs libpcap or tcpdump, and neither was found") from None
    if done.returncode != 0:
        message = next((line for line in done.stderr.splitlines() if not line.startswith("reading from")),
                       "tcpdump could not compile it")
        raise CaptureFilterError(f"bad capture filter '{expression}': {message.removeprefix('tcpdump: ')}")
    numbers = [tuple(map(int, line.split())) for line in done.stdout.splitlines()[1:] if line.strip()]
    return [tuple(n) for n in numbers]


def _assemble(program):
    """Labels -> the relative jumps of classic BPF (counted from the next instruction)."""
    labels, code = {}, []
    for item in program:
        if item[0] == "label":
            labels[item[1]] = len(code)
        else:
            code.append(item)

    def offset(value, index):
        return labels[value] - index - 1 if isinstance(value, str) else value

    return [(op, offset(jt, index), offset(jf, index), offset(k, index) if op == _JA else k)
            for index, (op, jt, jf, k) in enumerate(code)]


def _is_loopback(interface: str) -> bool:
    try:
        with open(f"/sys/class/net/{interface}/type") as kind:
            return int(kind.read()) == ARPHRD_LOOPBACK
    except (OSError, ValueError):  # no such interface (bind says so) or no /sys
        return interface == "lo"


def _attach(sock: socket.socket, program) -> None:
    code = b"".join(struct.pack("<HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class LiveCapture:
    """One interface opened for capture: ``batches()`` yields its frames, ``stats()``
    says what the kernel counted."""

    def __init__(self, interface: str, buffer_mib: int = DEFAULT_BUFFER_MIB, capture_filter=()):
        self.interface = interface
        self.capture_filter = capture_filter  # compile_capture_filter's program (-f), run after ours
        self.buffer_mib = buffer_mib
        self.blocks = max(4, (buffer_mib << 20) // BLOCK_SIZE)
        self.read = 0                   # frames handed out
        self._stop = self._abandon = False
        self._counted = [0, 0]          # PACKET_STATISTICS resets on each read: the sums
        self.sock = self._open()
        try:
            self.ring = mmap.mmap(self.sock.fileno(), self.blocks * BLOCK_SIZE)
        except OSError as error:
            self.sock.close()
            raise LiveError(f"cannot map the capture buffer: {error.strerror or error}") from None
        try:
            self._bind()
        except BaseException:
            self.close()
            raise

    def _open(self) -> socket.socket:
        interface = self.interface
        try:
            # Protocol 0: no packet is taken before the filter and the ring are in place (bind).
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError:
            raise LiveError(f"sniffing on {interface} needs root (or CAP_NET_RAW): run it with sudo") from None
        except (AttributeError, OSError) as error:
            raise LiveError(f"cannot open a packet socket: {getattr(error, 'strerror', None) or error}") from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            _attach(sock, _filter_program(_is_loopback(interface), self.capture_filter))
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _ring_request(
                BLOCK_SIZE, self.blocks, BLOCK_SIZE, self.blocks, BLOCK_TIMEOUT_MS, 0, 0))
        except OSError as error:
            sock.close()
            if error.errno == errno.ENOMEM:
                raise LiveError(f"cannot get a {self.buffer_mib} MiB capture buffer from the kernel: "
                                f"try a smaller --buffer") from None
            raise LiveError(f"cannot set up a capture ring (TPACKET_V3): {error.strerror or error}") from None
        return sock

    def _bind(self):
        try:
            self.sock.bind((self.interface, ETH_P_ALL))
        except OSError as error:
            if error.errno == errno.ENODEV:
                raise LiveError(f"no such interface: {self.interface}") from None
            raise LiveError(f"cannot listen on {self.interface}: {error.strerror or error}") from None

    def stop(self):
        """Stop taking packets; ``batches()`` still yields those the ring holds. Safe in a
        signal handler (it only sets a flag)."""
        self._stop = True

    def abandon(self):
        """Stop at once; what the ring still holds is counted as unread."""
        self._stop = self._abandon = True

    def batches(self, duration: Optional[float] = None) -> Iterator[List[Frame]]:
        """Frames block by block (a block is at most BLOCK_TIMEOUT_MS old; an empty list
        after each BLOCK_TIMEOUT_MS without any), until ``duration`` seconds pass,
        ``stop()`` (then the ring is drained) or ``abandon()``."""
        deadline = None if duration is None else time.monotonic() + duration
        ring, blocks = self.ring, self.blocks
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLERR)
        index, closed_at = 0, None
        while not self._abandon:
            if closed_at is None and (self._stop or (deadline is not None and time.monotonic() >= deadline)):
                self._close_filter()
                closed_at = time.monotonic()
            base = index * BLOCK_SIZE
            status, count, first = _block_header(ring, base + 8)
            if not status & TP_STATUS_USER:
                # The kernel hands over a block with packets within two of its timer
                # periods; after that, with the filter closed, there is nothing more.
                if closed_at is not None and time.monotonic() - closed_at > 3 * BLOCK_TIMEOUT_MS / 1000:
                    return
                if not poller.poll(BLOCK_TIMEOUT_MS):
                    yield []    # a quiet interface: the caller's clock moves on all the same
                continue
            yield self._frames(ring, base, count, first)
            struct.pack_into("<I", ring, base + 8, 0)   # the block goes back to the kernel
            index = (index + 1) % blocks

    def _frames(self, ring, base, count, offset):
        frames, number = [], self.read
        position = base + offset
        for _ in range(count):
            next_offset, seconds, nanoseconds, length, net = _packet_header(ring, position)
            start = position + net
            number += 1
            frames.append((number, seconds + nanoseconds / 1e9, LINKTYPE_RAW, ring[start:start + length]))
            position += next_offset
        self.read = number
        return frames

    def _close_filter(self):
        """From now on the kernel lets nothing in (and counts nothing more)."""
        _attach(self.sock, [(_RET, 0, 0, 0)])

    def stats(self) -> Stats:
        """What the kernel counted so far (received, dropped), and what was not read."""
        data = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _statistics.size)
        packets, drops, _frozen = _statistics.unpack(data)
        self._counted[0] += packets
        self._counted[1] += drops
        received, dropped = self._counted
        return Stats(received, dropped, max(0, received - dropped - self.read))

    def close(self):
        try:
            self.ring.close()
        except BufferError:  # a frame still points into it: the socket's close frees it anyway
            pass
        self.sock.close()


def open_interface(interface: str, buffer_mib: int = DEFAULT_BUFFER_MIB, capture_filter=()) -> LiveCapture:
    return LiveCapture(interface, buffer_mib, capture_filter)
