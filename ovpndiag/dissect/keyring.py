"""Keys given by the user, applied to a flow: HMACs verified, tls-crypt opened.

Each direction of a flow is checked as its receiver would check it. For
tls-auth the key direction is worked out per direction (the first one that
verifies is kept), so the user need not know it; ``--key-direction`` pins the
client's. For tls-crypt-v2 a server key opens each client's WKc, which gives
that session's key.
"""

from typing import NamedTuple, Optional

from ..keys import StaticKey, TLSCryptV2ClientKey, TLSCryptV2ServerKey
from ..protocol import CARRIES_WKC
from ..wrap import TLSAuth, TLSCrypt, TLSCryptV2Server, WrapError
from .packetdecode import decode_packet as decode
from ..protocol import DIGEST_BY_SIZE
from .infer import TLS_CRYPT_V2

# The receiver's key direction to try first: servers usually use 0, clients 1.
_RECEIVER_DIRECTIONS = {"client": (0, None, 1), "server": (1, None, 0)}


class Opened(NamedTuple):
    valid: Optional[bool]  # None: no key applies to this packet
    decrypted: Optional[bytes] = None  # tls-crypt: wire bytes with the plaintext in place
    key_direction: Optional[str] = None  # tls-auth: the sender's direction, "0", "1" or "bidirectional"


NOT_CHECKED = Opened(None)


class KeyRing:
    def __init__(self, tls_auth: Optional[StaticKey] = None, tls_crypt: Optional[StaticKey] = None,
                 tls_crypt_v2=None, client_key_direction: Optional[object] = None):
        self.tls_auth, self.tls_crypt = tls_auth, tls_crypt
        self.v2_server = tls_crypt_v2 if isinstance(tls_crypt_v2, TLSCryptV2ServerKey) else None
        self.v2_client = tls_crypt_v2 if isinstance(tls_crypt_v2, TLSCryptV2ClientKey) else None
        self.client_key_direction = client_key_direction  # "0", "1", "none" or None: find out

    @property
    def empty(self):
        return not (self.tls_auth or self.tls_crypt or self.v2_server or self.v2_client)

    @property
    def kinds(self):
        """The wrappings there are keys for."""
        return [kind for kind, key in (("tls-auth", self.tls_auth), ("tls-crypt", self.tls_crypt),
                                       ("tls-crypt-v2", self.v2_server or self.v2_client)) if key is not None]

    def for_flow(self) -> "FlowKeys":
        return FlowKeys(self)


class FlowKeys:
    """One flow's view of the keys, remembering what verified."""

    def __init__(self, ring: KeyRing):
        self.ring = ring
        self.receivers = {}  # sender -> TLSAuth that verified its packets
        self.v2_sessions = {}  # client session id -> (opens client packets, opens server packets)
        self.v2_metadata = {}  # client session id -> ClientKeyInfo without the key
        if ring.v2_client:
            kc = ring.v2_client.kc
            self.v2_default = (TLSCrypt(kc, "server"), TLSCrypt(kc, "client"))
        else:
            self.v2_default = None

    def open(self, data: bytes, sender: str, wrapping, client_session_id: Optional[int]) -> Opened:
        kind = wrapping.kind
        if kind == "tls-auth" and self.ring.tls_auth is not None:
            return self._tls_auth(data, sender, wrapping.hmac_size)
        if kind == "tls-crypt" and self.ring.tls_crypt is not None:
            opener = TLSCrypt(self.ring.tls_crypt, "server" if sender == "client" else "client")
            return self._tls_crypt(opener, data)
        if kind == "tls-crypt-v2":
            pair = self._v2_pair(data, sender, client_session_id)
            if pair is not None:
                return self._tls_crypt(pair[0] if sender == "client" else pair[1], data)
        return NOT_CHECKED

    def _tls_auth(self, data, sender, hmac_size):
        digest = DIGEST_BY_SIZE.get(hmac_size)
        if digest is None:
            return NOT_CHECKED
        known = self.receivers.get(sender)
        if known is not None and known.digest == digest:
            return Opened(known.verify(data), key_direction=self._sender_direction(sender))
        for receiver in self._receivers(sender, digest):
            if receiver.verify(data):
                self.receivers[sender] = receiver
                return Opened(True, key_direction=self._sender_direction(sender))
        return Opened(False)

    def _sender_direction(self, sender):
        """The sender's key-direction, from the HMAC slot its packets verify with:
        slot 1 is direction 1; slot 0 is direction 0 if the other side uses slot 1,
        bidirectional if it uses slot 0 too, either while the other side is unseen."""
        slot = self.receivers[sender].receive_index
        if slot == 1:
            return "1"
        other = self.receivers.get("server" if sender == "client" else "client")
        if other is None:
            return "0 or bidirectional"
        return "bidirectional" if other.receive_index == 0 else "0"

    def _receivers(self, sender, digest):
        pinned = self.ring.client_key_direction
        if pinned is not None:
            client = None if pinned == "none" else int(pinned)
            # the server's direction is the other one (bidirectional stays bidirectional)
            receiver = client if sender == "server" else (None if client is None else 1 - client)
            return [TLSAuth(self.ring.tls_auth, receiver, digest)]
        return [TLSAuth(self.ring.tls_auth, d, digest) for d in _RECEIVER_DIRECTIONS[sender]]

    @staticmethod
    def _tls_crypt(opener, data):
        try:
            return Opened(True, opener.unwrap(data).decrypted)
        except WrapError:
            return Opened(False)

    def _v2_pair(self, data, sender, client_session_id):
        if self.ring.v2_server is not None and sender == "client" and data and data[0] >> 3 in CARRIES_WKC:
            server = TLSCryptV2Server(self.ring.v2_server)
            wkc_len = decode(data, TLS_CRYPT_V2).wkc_len
            if wkc_len:
                try:
                    info = server.unwrap_client_key(data[-wkc_len:])
                except WrapError:
                    return None
                self.v2_sessions[client_session_id] = (TLSCrypt(info.kc, "server"), TLSCrypt(info.kc, "client"))
                self.v2_metadata[client_session_id] = {"metadata_type": info.metadata_type,
                                                       "timestamp": info.timestamp}
        return self.v2_sessions.get(client_session_id, self.v2_default)


