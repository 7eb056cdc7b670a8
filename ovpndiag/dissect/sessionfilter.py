"""``--sessions`` with ``-Y``: the sessions one of whose packets matches, each shown whole.

A display filter picks packets; a session summary is made of all of a session's
packets. So the filter chooses which summaries are shown, never what is in them
(``--sessions -Y 'hmac_valid == false'``: the sessions with a bad HMAC, with all their
counts). A matching packet is placed by its flow (transport, server and client
endpoints) and its client's session id; a packet that names no client session id (a
data packet, a server packet without its peer's) stands for every session of its flow.
"""

from typing import Dict, Optional, Set, Tuple

Flow = Tuple[str, tuple, tuple]  # (transport, (server, port), (client, port))


class MatchedSessions:
    def __init__(self):
        self.flows: Dict[Flow, Set[Optional[int]]] = {}  # -> client session ids seen matching (None: any)

    def add(self, record):
        """A packet (a dissect.record.Record) that matched the filter."""
        here, there = (record.src, record.sport), (record.dst, record.dport)
        if record.sender == "client":
            client, server, client_id = here, there, record.session_id
        else:
            client, server, client_id = there, here, record.remote_session_id
        self.flows.setdefault((record.transport, server, client), set()).add(client_id)

    def keeps(self, summary: dict) -> bool:
        """Whether this session summary (``Session.to_dict``) had a matching packet."""
        own = summary.get("client_session_id")
        own = int(own, 16) if isinstance(own, str) else own
        server = (summary["server"], summary["server_port"])
        clients = [(summary["client"], summary["client_port"])] + \
            [(moved["client"], moved["client_port"]) for moved in summary.get("floated_to", ())]
        for client in clients:
            ids = self.flows.get((summary["transport"], server, client))
            if ids and (None in ids or own is None or own in ids):
                return True
        return False
