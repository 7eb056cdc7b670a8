"""One OpenVPN packet as the reader hands it to renderers: a ``Record``.

Its fields are the keys of ``dissect --json`` (README), in the same order
(``FIELDS``); None means the packet has no such field. One exception: a wrapped
packet (tls-auth, tls-crypt, tls-crypt-v2) has ``hmac_valid`` even when no key
checked it (then None), so ``signed`` says whether it is there at all.

The rest is for renderers and is never in the JSON: ``sender`` ("client" or
"server"), ``data`` (the packet's bytes as captured, without TCP framing),
``decrypted`` (the same packet with the tls-crypt plaintext in place, when a key
opened it), ``relative_time`` (seconds since the capture's first frame),
``decoded_with`` (the Wrapping its fields were read with), ``payload_offset``
(where the TLS bytes, TLVs or data start in ``decrypted or data``), ``hmac`` and
``tag`` (bytes), ``raw_tlvs`` (a reset's TLVs as (optional, type, value)),
``tls_details`` (-V: what the TLS messages it completes say) and ``wkc_metadata``
(what a tls-crypt-v2 client key opened by the user's server key says).

A record is plain data: making one formats nothing; ``render`` does that.
"""

from operator import attrgetter

# The JSON keys, in JSON order ("file", the capture's name, is the renderer's to add).
FIELDS = ("frame", "time", "src", "dst", "sport", "dport", "transport", "length",
          "opcode", "opcode_value", "key_id", "peer_id", "wrapping", "hmac_size", "session_id",
          "replay_packet_id", "net_time", "wkc_len", "ciphertext_len", "acks", "remote_session_id",
          "message_packet_id", "payload_len", "malformed", "dynamic", "hmac_valid", "key_direction", "tls", "tlvs")
EXTRAS = ("sender", "data", "decrypted", "relative_time", "decoded_with", "payload_offset", "hmac", "tag",
          "raw_tlvs", "tls_details", "wkc_metadata", "signed")

_BEFORE_HMAC = FIELDS[:FIELDS.index("hmac_valid")]
_AFTER_HMAC = FIELDS[FIELDS.index("hmac_valid") + 1:]
_before_hmac, _after_hmac = attrgetter(*_BEFORE_HMAC), attrgetter(*_AFTER_HMAC)


class Record:
    __slots__ = FIELDS + EXTRAS

    def __init__(self, frame=None, time=None, ends=(None, None, None, None, None), length=None, sender=None,
                 data=None, relative_time=None):
        """``ends``: (src, dst, sport, dport, transport); every decoded field starts absent."""
        self.frame, self.time, self.length = frame, time, length
        self.src, self.dst, self.sport, self.dport, self.transport = ends
        self.sender, self.data, self.relative_time = sender, data, relative_time
        self.opcode = self.opcode_value = self.key_id = self.peer_id = self.wrapping = self.hmac_size = None
        self.session_id = self.replay_packet_id = self.net_time = self.wkc_len = self.ciphertext_len = None
        self.acks = self.remote_session_id = self.message_packet_id = self.payload_len = self.malformed = None
        self.dynamic = self.hmac_valid = self.key_direction = self.tls = self.tlvs = None
        self.decrypted = self.decoded_with = self.payload_offset = self.hmac = self.tag = None
        self.raw_tlvs = self.tls_details = self.wkc_metadata = None
        self.signed = False

    def as_dict(self) -> dict:
        """The fields the packet has, in JSON order (session ids as ints)."""
        fields = {name: value for name, value in zip(_BEFORE_HMAC, _before_hmac(self)) if value is not None}
        if self.signed:
            fields["hmac_valid"] = self.hmac_valid
        for name, value in zip(_AFTER_HMAC, _after_hmac(self)):
            if value is not None:
                fields[name] = value
        return fields

    def __repr__(self):
        return f"Record({self.as_dict()!r})"
