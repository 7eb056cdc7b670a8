"""``conf.contribs["openvpn"]``: what Scapy users tell the OpenVPN layers.

``ovpndiag.scapy_contrib`` installs these settings; ``ovpndiag.layers`` reads them
(importing this module only then) for packets whose wrapping its caller did not
give - the library itself always gives it, so it never pays for what is here.

``"wrapping"``  ``"auto"`` (the default): inferred per packet, as described below;
                fixed: ``"none"``, ``"tls-auth:SHA256"`` (any ``--auth`` digest),
                ``"tls-crypt"``, ``"tls-crypt-v2"`` or a ``Wrapping``; ``"tls-auth"``
                alone: tls-auth, its HMAC size inferred.
``"tls"``       ``False`` (the default); ``True``: the payload of a P_CONTROL_V1 (or
                P_CONTROL_WKC_V1) that starts with a whole TLS record is handed to
                Scapy's TLS layer (``scapy.layers.tls``) instead of ``Raw``. The layers
                see one packet at a time, so a record cut across packets stays ``Raw``
                (``ovpndiag dissect`` puts those back together).

Inference uses ``dissect.infer``'s rules through its public functions, on one packet
at a time: each candidate layout is tried on the packet alone; when one is left, it is
the packet's, and it is remembered for the packet's flow (its IP addresses and ports,
or its session id when no transport layer is under it); when several are left, the
flow's remembered wrapping is taken if it is one of them, else the most likely one.
A renegotiation (key id 1-7) of a flow read as none or tls-auth takes the flow's
wrapping unless only tls-crypt reads it (2.6's dynamic tls-crypt), as the capture
reader decides. Scapy dissects a packet before it sets the packet's time, so the
net-time check (a peer clock years off) is not made here.
"""

from collections import OrderedDict
from functools import lru_cache
from typing import Optional, Tuple

from .dissect.infer import TLS_CRYPT, TLS_CRYPT_V2, WrappingInference, candidates_for, readable_as, session_id_of
from .protocol import HMAC_SIZES, PLAIN, Wrapping, digest_name

SETTINGS_KEY = "openvpn"
DEFAULTS = {"wrapping": "auto", "tls": False}
MAX_FLOWS = 4096  # flows remembered (least recently seen forgotten first)
NO_CLOCK = 0.0  # infer.py's "capture clock unknown": net time is not judged
_TLS_OPCODES = (4, 11)  # P_CONTROL_V1, P_CONTROL_WKC_V1
_TLS_CONTENT_TYPES = (20, 21, 22, 23, 24)


def install_defaults(contribs: dict) -> dict:
    """Fill in the settings a user has not set (what was set before stays)."""
    settings = contribs.setdefault(SETTINGS_KEY, {})
    for name, value in DEFAULTS.items():
        settings.setdefault(name, value)
    return settings


@lru_cache(maxsize=64)
def candidates(setting) -> Tuple[Wrapping, ...]:
    """The wrappings a ``"wrapping"`` setting leaves: one when it is fixed."""
    if isinstance(setting, Wrapping):
        return (setting,)
    kind, _, digest = str(setting).partition(":")
    kind = kind.strip().lower()
    if kind == "auto" and not digest:
        return tuple(candidates_for())
    if kind == "tls-auth" and digest:
        try:
            return (Wrapping.tls_auth(digest_name(digest)),)
        except ValueError:
            pass
    elif kind in ("none", "tls-auth", "tls-crypt", "tls-crypt-v2") and not digest:
        return tuple(candidates_for(kind))
    raise ValueError(_bad_setting(setting))


def _bad_setting(setting) -> str:
    return (f'conf.contribs["openvpn"]["wrapping"] = {setting!r}: expected "auto", "none", "tls-auth", '
            f'"tls-auth:DIGEST" ({", ".join(HMAC_SIZES)}), "tls-crypt", "tls-crypt-v2" or a Wrapping')


def fixed_wrapping(settings: dict) -> Optional[Wrapping]:
    """The wrapping the settings fix, or None when it is inferred per packet."""
    choices = _choices(settings)
    return choices[0] if len(choices) == 1 else None


def _choices(settings: dict) -> Tuple[Wrapping, ...]:
    setting = settings.get("wrapping", DEFAULTS["wrapping"])
    try:
        return candidates(setting)
    except (ValueError, TypeError):
        # Scapy turns a layer's exception into Raw without a word (unless conf.debug_dissector):
        # say once why every packet is Raw.
        message = _bad_setting(setting)  # (TypeError: unhashable, so not a setting either)
        if message not in _WARNED:
            _WARNED.add(message)
            from scapy.error import log_runtime
            log_runtime.warning(message)
        raise ValueError(message) from None


_WARNED = set()


def wrapping_for(settings: dict, data: bytes, underlayer=None) -> Wrapping:
    """The wrapping to read one OpenVPN packet (no TCP framing) with."""
    choices = _choices(settings)
    if len(choices) == 1:
        return choices[0]
    data = bytes(data)
    session_id = session_id_of(data)  # (where wirelayout says it is)
    if session_id is None:
        return PLAIN  # nothing to infer: building a packet, a data packet, too short for a session id
    flow_key, sender = _flow_of(underlayer, session_id)
    return FLOWS.get(flow_key).infer(data, session_id, sender, choices)


class FlowMemory:
    """What the decisive packets of one flow showed, for those that are not."""

    __slots__ = ("wrapping", "midsession", "renegotiation", "session_ids")

    def __init__(self):
        self.wrapping = None  # key id 0: the session's wrapping
        self.midsession = None  # key ids 1-7 of a session whose key 0 was not seen
        self.renegotiation = {}  # key id -> wrapping, once decided (as the capture reader keeps it)
        self.session_ids = {}  # sender -> its session id (to check the ACKs of the other side)

    def infer(self, data: bytes, session_id: int, sender, choices) -> Wrapping:
        peer = next((sid for who, sid in self.session_ids.items() if who != sender), None)
        self.session_ids[sender] = session_id
        key_id = data[0] & 7
        if key_id and self.wrapping is not None:
            return self._renegotiation(data, key_id, peer)
        alone = WrappingInference(choices)
        decided = alone.observe(data, peer, NO_CLOCK)
        known = self.midsession if key_id else self.wrapping
        if decided is not None:
            if decided == TLS_CRYPT and known == TLS_CRYPT_V2:
                return known  # after its first packet, tls-crypt-v2 reads as tls-crypt
            if key_id:
                self.midsession = decided
            elif decided != self.wrapping:
                self.wrapping, self.renegotiation = decided, {}
            return decided
        survivors = alone.candidates  # (all of them when none reads as sense)
        if known is not None and (known in survivors or (known == TLS_CRYPT_V2 and TLS_CRYPT in survivors)):
            return known
        return survivors[0]  # infer.py's order of preference

    def _renegotiation(self, data: bytes, key_id: int, peer) -> Wrapping:
        wrapping = self.renegotiation.get(key_id)
        if wrapping is None:
            wrapping = self.wrapping
            if wrapping.kind in ("none", "tls-auth") and not readable_as(data, wrapping, peer, NO_CLOCK) \
                    and readable_as(data, TLS_CRYPT, None, NO_CLOCK):
                wrapping = TLS_CRYPT  # 2.6's dynamic tls-crypt
            self.renegotiation[key_id] = wrapping
        return wrapping


class FlowCache:
    """FlowMemory by flow, the least recently seen forgotten beyond ``size``."""

    def __init__(self, size: int = MAX_FLOWS):
        self.size = size
        self.flows = OrderedDict()

    def get(self, key) -> FlowMemory:
        memory = self.flows.get(key)
        if memory is None:
            memory = self.flows[key] = FlowMemory()
            if len(self.flows) > self.size:
                self.flows.popitem(last=False)
        else:
            self.flows.move_to_end(key)
        return memory

    def clear(self):
        self.flows.clear()


FLOWS = FlowCache()


def _flow_of(underlayer, session_id: int):
    """(flow key, sender) from the IP and UDP/TCP layers under a packet; without
    them, the packet's own session id stands for its flow."""
    layer = underlayer
    while layer is not None and not ("sport" in layer.fieldtype and "dport" in layer.fieldtype):
        layer = layer.underlayer
    network = layer.underlayer if layer is not None else None
    if network is None or "src" not in network.fieldtype:
        return ("session", session_id), None
    kind = type(layer).__name__
    sender, receiver = (network.src, layer.sport), (network.dst, layer.dport)
    return (kind, frozenset((sender, receiver))), sender


def tls_payload(data: bytes, underlayer):
    """A control packet's payload as Scapy TLS records, one layer each, when it
    starts with a whole one (what follows the whole records is Raw); else None.

    The records of one packet share a Scapy TLS session (a ServerHello tells how to
    read what follows it); a record that Scapy's TLS layer fails on with that
    context - as it does on the encrypted records after a TLS 1.3 ServerHello when it
    has no keys - is read again without it."""
    from scapy.layers.tls.record import TLS
    from scapy.layers.tls.session import tlsSession
    from scapy.packet import Raw

    whole = whole_records_length(data)
    if not whole:
        return None
    session, first, offset = tlsSession(), None, 0
    while offset < whole:
        end = offset + 5 + int.from_bytes(data[offset + 3:offset + 5], "big")
        try:
            record = TLS(data[offset:end], tls_session=session, _internal=1)
        except Exception:
            try:
                record = TLS(data[offset:end], _internal=1)
            except Exception:  # (Scapy's TLS cannot read it at all: a HelloRetryRequest's key share)
                record = Raw(data[offset:end])
        if first is None:
            first = record
        else:
            first.add_payload(record)
        offset = end
    if whole < len(data):
        first.add_payload(Raw(data[whole:]))
    return first


def whole_records_length(data: bytes) -> int:
    """Bytes of ``data`` taken by whole TLS records from its start (0: none)."""
    offset = 0
    while len(data) - offset >= 5 and data[offset] in _TLS_CONTENT_TYPES and data[offset + 1] == 3:
        end = offset + 5 + int.from_bytes(data[offset + 3:offset + 5], "big")
        if end > len(data):
            break
        offset = end
    return offset


def hands_to_tls(settings: dict, opcode: int) -> bool:
    return bool(settings.get("tls")) and opcode in _TLS_OPCODES
