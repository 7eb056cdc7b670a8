"""The reader of a --sessions worker (see ``parallel``): a Reader that also says, at
the end, its flows' sessions packed in the order one reader would list them, and the
keys a floated client would be found by (for the parent to tell whether a float
crossed shards)."""

from .reader import Reader
from .sessions import pack_summaries


class ShardSessions(Reader):
    def __init__(self, options):
        super().__init__(options)
        self.probes = []  # hashes of the keys each new flow's first packet looked for (_float)

    def _flow(self, datagram):
        known = len(self.flows)
        direction = super()._flow(datagram)
        if len(self.flows) != known:
            direction[0].first_frame = datagram.frame  # (one reader lists sessions by flow, as flows began)
        return direction

    def _float(self, flow, client_id, peer_id):
        if client_id is not None:
            self.probes.append(hash((flow.server, flow.transport, client_id)))
        if peer_id is not None:
            self.probes.append(hash((flow.server, flow.transport, "peer", peer_id)))
        super()._float(flow, client_id, peer_id)

    def packed_flows(self) -> list:
        """(frame the flow began at, its sessions, their summaries packed) for each flow
        with sessions, in summaries()' order (no flow expired: see parallel._summarise)."""
        return [(flow.first_frame, len(flow.sessions), pack_summaries([s.to_dict() for s in flow.sessions.values()]))
                for flow in self.flows.values() if flow.floated_to is None and flow.sessions]

    def registered(self) -> list:
        """Hashes of the keys a floated client's flow is found by (Reader._floats_by)."""
        return list({hash(key) for flow in self.flows.values() for key in flow.float_keys})
