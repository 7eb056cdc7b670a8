"""Reading captures down to transport payloads, knowing nothing about OpenVPN.

- ``pcapfile``   pcap / pcapng files -> frames (streamed, ``CaptureError`` on damage)
- ``framedecode`` a frame -> its UDP datagram, TCP segment, IP fragment or ICMP error
- ``ipfrag``     IPv4 / IPv6 fragment reassembly, bounded
- ``tcpstream``  TCP segments -> in-order stream bytes per direction, bounded
- ``datagrams``  all of it together: ``read_transport(path)`` and ``Transport`` (live);
  with ``events=True`` also ``TransportEvent``s (ICMP errors, TCP FIN/RST/refused/unanswered)
"""

from .pcapfile import CaptureError, Frame, read_frames
from .datagrams import Counts, Datagram, Transport, TransportEvent, read_transport

__all__ = ["CaptureError", "Counts", "Datagram", "Frame", "Transport", "TransportEvent", "read_frames",
           "read_transport"]
