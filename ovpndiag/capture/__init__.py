"""Reading captures down to transport payloads, knowing nothing about OpenVPN.

- ``pcapfile``   pcap / pcapng files -> frames (streamed, ``CaptureError`` on damage)
- ``framedecode`` a frame -> its UDP datagram, TCP segment or IP fragment
- ``ipfrag``     IPv4 / IPv6 fragment reassembly, bounded
- ``tcpstream``  TCP segments -> in-order stream bytes per direction, bounded
- ``datagrams``  all of it together: ``read_transport(path)`` and ``Transport`` (live)
"""

from .pcapfile import CaptureError, Frame, read_frames
from .datagrams import Counts, Datagram, Transport, read_transport

__all__ = ["CaptureError", "Counts", "Datagram", "Frame", "Transport", "read_frames", "read_transport"]
