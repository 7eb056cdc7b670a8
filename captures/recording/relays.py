#!/usr/bin/env python3
"""Two small relays a recording runs as processes of their own (standard library only):

    relays.py vlan NS:TAP:VETH NS:TAP:VETH --tags TPID:VID[,TPID:VID]   (a VLAN trunk, "vlan" scenarios)
    relays.py udp LISTEN_PORT SERVER SERVER_PORT                         (a rebinding NAT, floating clients)

Each prints "ready" once it listens and runs until SIGTERM (netns.start_relay starts them).
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys


def _enter_netns(name: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:             # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def vlan_relay(ends: list[tuple[str, str, str]], tags: list[tuple[int, int]]) -> None:
    """Carry Ethernet frames between a TAP device and a veth in each namespace, adding the
    VLAN tags on the way to the veth and removing them on the way back: a VLAN trunk port.
    ``ends`` are (namespace, TAP name, veth name). Runs until SIGTERM."""
    import fcntl
    import select
    import socket

    tag_bytes = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags)
    fds = {}
    for ns, tap_name, link in ends:
        _enter_netns(ns)                    # the TAP and the socket live in this namespace
        tap = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(tap, 0x400454CA, struct.pack("16sH", tap_name.encode(), 0x0002 | 0x1000))  # TUNSETIFF: IFF_TAP | IFF_NO_PI
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        sock.bind((link, 0))
        fds[tap] = (tap, sock, True)
        fds[sock.fileno()] = (tap, sock, False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for fd in select.select(list(fds), [], [])[0]:
            tap, sock, from_tap = fds[fd]
            if from_tap:
                frame = os.read(tap, 65535)
                sock.send(frame[:12] + tag_bytes + frame[12:])
            else:
                try:
                    frame, address = sock.recvfrom(65535)
                except OSError:             # ENETDOWN while a link changes state
                    continue
                if address[2] == 4:         # PACKET_OUTGOING: our own copy
                    continue
                # The kernel may have moved the outer tag out of the frame already.
                offset = 12
                while frame[offset:offset + 2] in (b"\x81\x00", b"\x88\xa8"):
                    offset += 4
                os.write(tap, frame[:12] + frame[offset:])


def relay_udp(listen_port: int, server: str, server_port: int) -> None:
    """A NAT in front of a UDP client (in the client's namespace): datagrams from the client
    (to 127.0.0.1:listen_port) go to the server from this relay's own socket, answers go back. SIGUSR1 rebinds: a new
    socket, so a new source port, as a NAT that lost its mapping would; the old one is
    closed. Prints "ready", then one line per rebinding. Runs until SIGTERM."""
    import select
    import socket

    def outside() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((server, server_port))
        return sock

    inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inside.bind(("127.0.0.1", listen_port))
    out, client, rebind = outside(), None, []
    signal.signal(signal.SIGUSR1, lambda *_: rebind.append(True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        ready = select.select([inside, out], [], [])[0]
        if rebind:
            rebind.clear()
            old, out = out, outside()
            print(f"rebound: source port {old.getsockname()[1]} -> {out.getsockname()[1]}", flush=True)
            old.close()
            continue                        # `ready` may name the closed socket
        for sock in ready:
            if sock is inside:
                data, client = inside.recvfrom(65535)
                out.send(data)
            else:
                try:
                    data = sock.recv(65535)
                except ConnectionRefusedError:  # the server was not there (yet)
                    continue
                if client is not None:
                    inside.sendto(data, client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    vlan = kinds.add_parser("vlan", help="carry frames between TAP devices and tagged veth ends")
    vlan.add_argument("ends", nargs=2, metavar="NS:TAP:VETH")
    vlan.add_argument("--tags", required=True, help="TPID:VID,... outermost first")
    udp = kinds.add_parser("udp", help="a UDP NAT that rebinds on SIGUSR1")
    udp.add_argument("listen_port", type=int)
    udp.add_argument("server")
    udp.add_argument("server_port", type=int)
    args = parser.parse_args()
    if args.kind == "vlan":
        vlan_relay([tuple(end.split(":")) for end in args.ends],
                   [(int(tpid, 0), int(vid)) for tpid, vid in (tag.split(":") for tag in args.tags.split(","))])
    else:
        relay_udp(args.listen_port, args.server, args.server_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
