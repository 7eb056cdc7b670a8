"""The data channel of the staged handshake: keys, AEAD packets, an ICMP echo, the exit notification.

After PUSH_REPLY both peers hold 256 bytes of key material, ``key2``:

- from the TLS exporter (RFC 5705, label ``EXPORTER-OpenVPN-datakeys``) when both
  announced TLS key export (we put TLS_KEY_EXPORT in IV_PROTO, the PUSH_REPLY says
  ``protocol-flags ... tls-ekm``) - what 2.6 peers do;
- otherwise from OpenVPN's PRF, the TLS 1.0 PRF (P_MD5 xor P_SHA1) over the
  key-method-2 randoms (ssl.c, ``generate_key_expansion_openvpn_prf``)::

    master = PRF(pre_master, "OpenVPN master secret" | c.random1 | s.random1, 48)
    key2   = PRF(master, "OpenVPN key expansion" | c.random2 | s.random2 | c.sid | s.sid, 256)

``key2`` is two keys ``cipher(64) | hmac(64)``: the client sends with key 0 and
receives with key 1 (the server the other way round). AEAD ciphers use the first
16 or 32 bytes of the cipher slot as key and the first 8 bytes of the hmac slot as
the implicit IV (ssl.c, ``init_key_contexts``).

An AEAD data packet (crypto.c, ``openvpn_encrypt_aead``)::

    header | packet-id(4) | tag(16) | ciphertext
    nonce = packet-id | implicit IV (12 bytes); AD = header | packet-id

where the header is P_DATA_V2's 4 bytes (opcode/key-id, peer-id) - empty in the AD
for P_DATA_V1, whose opcode byte is added after encryption. Packet-ids count from 1
per direction; a received one is accepted once, within a 64-packet window.

The plaintext is an IP packet, the keepalive ping magic, or an OCC message (the
explicit-exit-notify is ``occ_magic | OCC_EXIT``, occ.c), framed for compression when the
server was configured with comp-lzo or compress (pushed, or the profile's option) and behind
a 4-byte header with --fragment (the profile's). The data stage sends
ICMP echoes from the pushed ifconfig address to the route-gateway (or
``--ping-target``) and counts the authenticated replies (ICMPv6 from the ifconfig-ipv6
address when the target is IPv6 or no IPv4 address was pushed); to a ``dev tap`` server (its
key-method options say so) they go in Ethernet frames, after ARP.

What this module uses from the Client (ovpndiag.client.session):
``settings`` (count, ping_target, data_ciphers), ``proto``, ``transport_send(bytes)``,
``transport_recv(timeout) -> bytes|None`` (data packets; control ones are handled there),
``tls_export(label, length) -> bytes|None``, ``key_derivation`` ("tls-ekm"|"prf"),
``key_exchange`` (key-method-2 randoms), ``session_id``, ``remote_session_id``,
``push_reply`` (parsed options), ``deadline`` (monotonic) and ``elapsed()``. The
stage leaves its facts in ``client.data_result`` too.
No key material is ever put in a Stage, a log or an exception message.
"""

import hashlib
import hmac
import ipaddress
import os
import struct
import time
from typing import Optional

from ..checksum import internet_checksum
from ..protocol import DATA_OPCODES
from . import Stage

KEY_EXPORT_LABEL = "EXPORTER-OpenVPN-datakeys"
KEY2_SIZE = 256  # two keys of cipher(64) | hmac(64)
SLOT = 64
IMPLICIT_IV_SIZE = 8
TAG_SIZE = 16
PACKET_ID_SIZE = 4
REPLAY_WINDOW = 64  # OpenVPN's default --replay-window

# The keepalive ping (ping.c, ping_string) and the OCC messages (occ.c, occ_magic).
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
OCC_EXIT = 6
EXIT_NOTIFY = OCC_MAGIC + bytes([OCC_EXIT])

# cipher name -> key size in bytes (all with a 16-byte tag and a 12-byte nonce)
AEAD_KEY_SIZES = {"AES-128-GCM": 16, "AES-192-GCM": 24, "AES-256-GCM": 32, "CHACHA20-POLY1305": 32}

ECHO_INTERVAL = 1.0  # seconds to wait for one echo's reply before sending the next (like ping)


class DataChannelError(ValueError):
    """A data packet we cannot accept, or keys we cannot make; the message says why (never the keys)."""


# --- key derivation ------------------------------------------------------------------

def _p_hash(digest, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 P_hash: HMAC(secret, A(i) | seed) for A(i) = HMAC(secret, A(i-1)), A(0) = seed."""
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + seed, digest).digest()
    return out[:length]


def tls1_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.0/1.1 PRF: P_MD5 over the first half of the secret xor P_SHA1 over
    the second half (the halves overlap by a byte when the length is odd). ``seed``
    is label | seed, as OpenVPN passes it."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash(hashlib.md5, secret[:half], seed, length)
    sha1 = _p_hash(hashlib.sha1, secret[len(secret) - half:], seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha1))


def openvpn_prf_key2(pre_master: bytes, client_random1: bytes, server_random1: bytes,
                     client_random2: bytes, server_random2: bytes,
                     client_sid: bytes, server_sid: bytes) -> bytes:
    """key2 the way OpenVPN derives it when TLS key export is not used."""
    master = tls1_prf(pre_master, b"OpenVPN master secret" + client_random1 + server_random1, 48)
    return tls1_prf(master, b"OpenVPN key expansion" + client_random2 + server_random2 + client_sid + server_sid,
                    KEY2_SIZE)


class DirectionKeys:
    """One direction's AEAD key and implicit IV, cut from one 128-byte key of key2."""

    __slots__ = ("aead", "implicit_iv")

    def __init__(self, cipher: str, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        size = AEAD_KEY_SIZES[cipher]
        self.aead = (ChaCha20Poly1305 if cipher == "CHACHA20-POLY1305" else AESGCM)(key[:size])
        self.implicit_iv = key[SLOT:SLOT + IMPLICIT_IV_SIZE]

    def __repr__(self):  # never the key
        return "DirectionKeys(<secret>)"


def split_key2(key2: bytes, cipher: str, server: bool = False):
    """(send, receive) DirectionKeys: a client sends with key 0, a server with key 1."""
    if len(key2) != KEY2_SIZE:
        raise DataChannelError(f"data-channel key material is {len(key2)} bytes, {KEY2_SIZE} expected")
    if cipher not in AEAD_KEY_SIZES:
        raise DataChannelError(f"cipher {cipher} is not supported (only AEAD: {', '.join(AEAD_KEY_SIZES)})")
    keys = (DirectionKeys(cipher, key2[:128]), DirectionKeys(cipher, key2[128:]))
    return (keys[1], keys[0]) if server else keys


# --- packets ---------------------------------------------------------------------------

# Compression framing (comp.h, compstub.c, comp.c). Servers configured with comp-lzo or compress
# expect every data-channel plaintext (IP packets, pings, OCC) framed even when nothing is
# compressed; nothing on the wire says so, the configuration or the PUSH_REPLY does.
NO_COMPRESS_BYTE, NO_COMPRESS_BYTE_SWAP = 0xFA, 0xFB
COMP_ALGV2_INDICATOR_BYTE, COMP_ALGV2_UNCOMPRESSED_BYTE = 0x50, 0x00
FRAMINGS = ("none", "lzo", "swap", "v2")


class UnreadablePayload(DataChannelError):
    """An authentic packet whose payload the server compressed or cut into fragments: we do
    not decompress or reassemble (the answers to our small echoes never are)."""


# --fragment (fragment.h): a 4-byte header before the (framed) payload; 0 is FRAG_WHOLE.
FRAG_WHOLE_HEADER = bytes(4)
FRAG_TYPE_MASK, FRAG_SEQ_AND_ID_MASK = 0x3, (0xFF << 2) | (0x1F << 10)


def add_fragment_header(payload: bytes) -> bytes:
    return FRAG_WHOLE_HEADER + payload


def strip_fragment_header(payload: bytes) -> bytes:
    if len(payload) < 4:
        raise DataChannelError(f"{len(payload)} bytes: too short for the --fragment header")
    flags = struct.unpack("!I", payload[:4])[0]
    if flags & FRAG_TYPE_MASK or flags & FRAG_SEQ_AND_ID_MASK:
        raise UnreadablePayload(f"a fragment (--fragment header 0x{flags:08x})")
    return payload[4:]


def compression_framing(option) -> str:
    """The framing of a comp-lzo/compress option line ("comp-lzo no", "compress lz4-v2", ...):
    "lzo" (one 0xFA byte first), "swap" (0xFB first, the first byte moved to the end),
    "v2" (only a leading 0x50 escaped) or "none"."""
    words = _words(option)
    if not words:
        return "none"
    if words[0] == "comp-lzo":
        return "lzo"
    if words[0] == "compress":
        algorithm = words[1] if len(words) > 1 else "stub"
        return {"stub": "swap", "lz4": "swap", "lzo": "lzo", "stub-v2": "v2", "lz4-v2": "v2"}.get(algorithm, "none")
    return "none"


def frame(plaintext: bytes, framing: str) -> bytes:
    if framing == "lzo":
        return bytes([NO_COMPRESS_BYTE]) + plaintext
    if framing == "swap" and plaintext:
        return bytes([NO_COMPRESS_BYTE_SWAP]) + plaintext[1:] + plaintext[:1]
    if framing == "v2" and plaintext[:1] == bytes([COMP_ALGV2_INDICATOR_BYTE]):
        return bytes([COMP_ALGV2_INDICATOR_BYTE, COMP_ALGV2_UNCOMPRESSED_BYTE]) + plaintext
    return plaintext


def unframe(payload: bytes, framing: str) -> bytes:
    """The plaintext inside a framed payload; UnreadablePayload if the server compressed it."""
    if framing == "none" or not payload:
        return payload
    if framing == "lzo":
        if payload[0] != NO_COMPRESS_BYTE:
            raise UnreadablePayload(f"compressed payload (header byte 0x{payload[0]:02x}, comp-lzo framing)")
        return payload[1:]
    if framing == "swap":
        if payload[0] != NO_COMPRESS_BYTE_SWAP:
            raise UnreadablePayload(f"compressed payload (header byte 0x{payload[0]:02x}, compress framing)")
        return payload[-1:] + payload[1:-1]
    if payload[0] != COMP_ALGV2_INDICATOR_BYTE:
        return payload
    if payload[1:2] != bytes([COMP_ALGV2_UNCOMPRESSED_BYTE]):
        raise UnreadablePayload(f"compressed payload (compress v2 algorithm {payload[1:2].hex() or 'missing'})")
    return payload[2:]


class ReplayWindow:
    """Packet-ids seen in one direction: each accepted once, none older than the window."""

    def __init__(self, size: int = REPLAY_WINDOW):
        self.size, self.highest, self.seen = size, 0, 0  # seen: bit i = highest - i arrived

    def check(self, packet_id: int):
        """Raise DataChannelError for a replayed or too old packet-id (does not record it)."""
        if packet_id == 0:
            raise DataChannelError("packet-id 0 (OpenVPN counts from 1)")
        if packet_id > self.highest:
            return
        age = self.highest - packet_id
        if age >= self.size:
            raise DataChannelError(f"packet-id {packet_id} is older than the replay window ({self.highest} seen)")
        if self.seen >> age & 1:
            raise DataChannelError(f"packet-id {packet_id} replayed")

    def record(self, packet_id: int):
        if packet_id > self.highest:
            shift = packet_id - self.highest
            self.seen = ((self.seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = packet_id
        else:
            self.seen |= 1 << (self.highest - packet_id)


class DataChannel:
    """Seals plaintexts into data packets and opens the peer's, for one key_id.

    ``peer_id`` None means P_DATA_V1 (the server pushed no peer-id); ``compression`` is one of
    FRAMINGS (see compression_framing)."""

    def __init__(self, key2: bytes, cipher: str, peer_id: Optional[int] = None, key_id: int = 0,
                 server: bool = False, compression: str = "none", fragment: bool = False):
        from ..layers import OpenVPNDataV1, OpenVPNDataV2
        from .reliable import build  # bytes(layer) without Scapy's copy: 25 us, not 75

        if compression not in FRAMINGS:
            raise DataChannelError(f"unknown compression framing {compression!r}")
        self.cipher, self.peer_id, self.key_id, self.compression = cipher, peer_id, key_id, compression
        self.fragment = fragment
        self.send_keys, self.recv_keys = split_key2(key2, cipher, server)
        # The header is the same for every packet: built once through the layers.
        if peer_id is None:
            self.header, self.layer = build(OpenVPNDataV1(key_id=key_id)), OpenVPNDataV1
        else:
            if not 0 <= peer_id <= 0xFFFFFF:
                raise DataChannelError(f"peer-id {peer_id} does not fit in 3 bytes")
            self.header, self.layer = build(OpenVPNDataV2(key_id=key_id, peer_id=peer_id)), OpenVPNDataV2
        self.ad_header = self.header if peer_id is not None else b""
        self.next_packet_id = 1
        self.replay = ReplayWindow()

    @property
    def format(self) -> str:
        return "P_DATA_V1" if self.peer_id is None else "P_DATA_V2"

    def seal(self, plaintext: bytes) -> bytes:
        """One data packet carrying ``plaintext``, with the next packet-id."""
        packet_id = struct.pack("!I", self.next_packet_id)
        self.next_packet_id += 1
        keys = self.send_keys
        payload = frame(plaintext, self.compression)
        if self.fragment:
            payload = add_fragment_header(payload)
        sealed = keys.aead.encrypt(packet_id + keys.implicit_iv, payload, self.ad_header + packet_id)
        # cryptography appends the tag; OpenVPN puts it before the ciphertext
        return self.header + packet_id + sealed[-TAG_SIZE:] + sealed[:-TAG_SIZE]

    def _body(self, packet: bytes) -> bytes:
        """What follows the header, read by the layers; raises DataChannelError."""
        from ..layers import from_wire

        parsed, malformed = from_wire(packet)
        if malformed:
            raise DataChannelError(f"malformed packet: {malformed}")
        if not isinstance(parsed, self.layer):
            raise DataChannelError(f"{parsed.opcode_name} where {self.format} was expected")
        if parsed.key_id != self.key_id:
            raise DataChannelError(f"key_id {parsed.key_id}, ours is {self.key_id}")
        if self.peer_id is not None and parsed.peer_id != self.peer_id:
            raise DataChannelError(f"peer-id {parsed.peer_id}, ours is {self.peer_id}")
        return bytes(parsed.payload)

    def open(self, packet: bytes) -> bytes:
        """The plaintext of the peer's data packet, authenticated and not replayed.

        Raises DataChannelError saying what is wrong."""
        if packet[:len(self.header)] == self.header:
            # opcode, key_id and peer-id as ours (built by the layers): what the checks below
            # accept, without a Scapy dissection (60 us, on the echo's round trip)
            body = packet[len(self.header):]
        else:
            body = self._body(packet)
        if len(body) < PACKET_ID_SIZE + TAG_SIZE:
            raise DataChannelError(f"{len(body)} bytes after the header: too short for packet-id and tag")
        packet_id, tag, ciphertext = body[:4], body[4:4 + TAG_SIZE], body[4 + TAG_SIZE:]
        number = struct.unpack("!I", packet_id)[0]
        self.replay.check(number)
        keys = self.recv_keys
        from cryptography.exceptions import InvalidTag

        try:
            plaintext = keys.aead.decrypt(packet_id + keys.implicit_iv, ciphertext + tag,
                                          self.ad_header + packet_id)
        except InvalidTag:
            raise DataChannelError(f"authentication tag does not verify ({self.cipher}, packet-id {number})") from None
        self.replay.record(number)
        if self.fragment:
            plaintext = strip_fragment_header(plaintext)
        return unframe(plaintext, self.compression)


def is_data_packet(packet: bytes) -> bool:
    return bool(packet) and packet[0] >> 3 in DATA_OPCODES


# --- ICMP echo (IPv4) ----------------------------------------------------------------------

def icmp_echo_request(source: str, target: str, ident: int, seq: int, payload: bytes = b"") -> bytes:
    """An IPv4 packet carrying an ICMP echo request, checksums filled in."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0x4000, 64, 1, 0,
                         ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(target).packed)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + icmp


def parse_icmp_echo_reply(packet: bytes):
    """(source, destination, ident, seq, payload) of an IPv4 ICMP echo reply whose
    checksums verify, else None."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    header_len = (packet[0] & 0x0F) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    if header_len < 20 or total > len(packet) or total < header_len + 8 or packet[9] != 1:
        return None
    if internet_checksum(packet[:header_len]) != 0:
        return None
    icmp = packet[header_len:total]
    if icmp[0] != 0 or icmp[1] != 0 or internet_checksum(icmp) != 0:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return (str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20])),
            ident, seq, icmp[8:])


def _icmp6_checksum(source: bytes, target: bytes, icmp: bytes) -> int:
    pseudo_header = source + target + struct.pack("!I3xB", len(icmp), 58)
    return internet_checksum(pseudo_header + icmp)


def icmp6_echo_request(source: str, target: str, ident: int, seq: int, payload: bytes = b"") -> bytes:
    """An IPv6 packet carrying an ICMPv6 echo request, checksum (over the pseudo-header) filled in."""
    src, dst = ipaddress.IPv6Address(source).packed, ipaddress.IPv6Address(target).packed
    icmp = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", _icmp6_checksum(src, dst, icmp)) + icmp[4:]
    return struct.pack("!IHBB", 6 << 28, len(icmp), 58, 64) + src + dst + icmp


def parse_icmp6_echo_reply(packet: bytes):
    """(source, destination, ident, seq, payload) of an IPv6 ICMPv6 echo reply (no extension
    headers) whose checksum verifies, else None."""
    if len(packet) < 48 or packet[0] >> 4 != 6 or packet[6] != 58:
        return None
    length = struct.unpack("!H", packet[4:6])[0]
    icmp = packet[40:40 + length]
    if length < 8 or len(icmp) < length or icmp[0] != 129 or icmp[1] != 0:
        return None
    if _icmp6_checksum(packet[8:24], packet[24:40], icmp) != 0:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return (str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40])),
            ident, seq, icmp[8:])


class EthernetLink:
    """For a ``dev tap`` server the data channel carries Ethernet frames: ask the target's MAC
    by ARP (the server's kernel answers for its tap address), answer ARP for our address, and
    put IP packets in frames to that MAC. Our MAC is random and locally administered."""

    BROADCAST = b"\xff" * 6

    def __init__(self, source: str, target: str):
        self.mac = bytes([0x02]) + os.urandom(5)
        self.source, self.target = ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(target).packed
        self.target_mac: Optional[bytes] = None

    def _arp(self, operation: int, destination: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
        return (destination + self.mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation) +
                self.mac + self.source + target_mac + target_ip)

    def arp_request(self) -> bytes:
        return self._arp(1, self.BROADCAST, bytes(6), self.target)

    def frame(self, ip_packet: bytes) -> bytes:
        return self.target_mac + self.mac + b"\x08\x00" + ip_packet

    def receive(self, frame: bytes):
        """(IP packet for us or None, ARP reply frame to send or None)."""
        if len(frame) < 14 or frame[:6] not in (self.mac, self.BROADCAST):
            return None, None
        if frame[12:14] == b"\x08\x00":
            return frame[14:], None
        if frame[12:14] != b"\x08\x06" or len(frame) < 42 or frame[14:20] != bytes.fromhex("000108000604"):
            return None, None
        operation, sender_mac, sender_ip, target_ip = frame[20:22], frame[22:28], frame[28:32], frame[38:42]
        if operation == b"\x00\x02" and sender_ip == self.target and target_ip == self.source:
            self.target_mac = sender_mac
        elif operation == b"\x00\x01" and target_ip == self.source:
            return None, self._arp(2, sender_mac, sender_mac, sender_ip)
        return None, None


def _dev_type(client) -> str:
    """"tap" when the server's key-method options say dev-type tap (a tun client's options
    differ and it only warns), else "tun"."""
    options = getattr(getattr(client, "server_key_message", None), "options", "") or ""
    return "tap" if "dev-type tap" in options.split(",") else "tun"


# --- what we read from the Client and its push reply -----------------------------------------

def _option(push_reply, *names):
    """The first of ``names`` present in the parsed push reply (e.g. "peer_id", then "peer-id")."""
    for name in names:
        value = (push_reply or {}).get(name)
        if value is not None:
            return value
    return None


def _words(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value).split()


def _peer_id(push_reply):
    words = _words(_option(push_reply, "peer_id", "peer-id"))
    return int(words[0]) if words else None


def _cipher(client) -> str:
    words = _words(_option(client.push_reply, "cipher"))
    if words:
        return words[0].upper()
    ciphers = client.settings.data_ciphers or ["AES-256-GCM"]  # no NCP: the first one we offered
    return ciphers[0].upper()


def key_derivation(client) -> str:
    """"tls-ekm" when both sides announced TLS key export (we in IV_PROTO, the server in
    the PUSH_REPLY's protocol-flags), else "prf"; the Client decides."""
    decided = getattr(client, "key_derivation", None)
    if decided in ("tls-ekm", "prf"):
        return decided
    # 2.6 servers say "protocol-flags ... tls-ekm" to 2.6 clients, "key-derivation tls-ekm" to older ones
    flags = _words(_option(client.push_reply, "protocol_flags", "protocol-flags")) + \
        _words(_option(client.push_reply, "key_derivation", "key-derivation"))
    return "tls-ekm" if "tls-ekm" in flags else "prf"


def derive_key2(client):
    """(key2, "tls-ekm" | "prf") for the client's session. Raises DataChannelError."""
    if key_derivation(client) == "tls-ekm":
        key2 = client.tls_export(KEY_EXPORT_LABEL, KEY2_SIZE)
        if not key2 or len(key2) != KEY2_SIZE:
            raise DataChannelError("the server uses TLS key export (tls-ekm) but the TLS exporter is unavailable")
        return bytes(key2), "tls-ekm"
    keys = client.key_exchange
    try:
        key2 = openvpn_prf_key2(keys.client_pre_master, keys.client_random1, keys.server_random1,
                                keys.client_random2, keys.server_random2,
                                bytes(client.session_id), bytes(client.remote_session_id))
    except ValueError as error:  # e.g. MD5 refused by a FIPS policy
        raise DataChannelError(f"OpenVPN's PRF (TLS 1.0 PRF) is unavailable here: {error}") from None
    return key2, "prf"


def _compression(client) -> str:
    """The framing from the last comp-lzo/compress option pushed, else the configuration's
    (``settings.compress``: the profile's option line, e.g. "comp-lzo no")."""
    pushed = [option for option in (client.push_reply or {}).get("raw") or ()
              if str(option).split()[:1] in (["comp-lzo"], ["compress"])]
    return compression_framing(pushed[-1] if pushed else getattr(client.settings, "compress", None))


def data_channel(client) -> "DataChannel":
    """The client's DataChannel, made on first use (kept as ``client.data_channel``)."""
    channel = getattr(client, "data_channel", None)
    if channel is None:
        key2, derivation = derive_key2(client)
        # --fragment (UDP only; not pushable) must match the server's configuration, like comp-lzo
        fragment = bool(getattr(client.settings, "fragment", None)) and _proto(client) == "udp"
        channel = DataChannel(key2, _cipher(client), _peer_id(client.push_reply), getattr(client, "key_id", 0) or 0,
                              compression=_compression(client), fragment=fragment)
        channel.key_derivation = derivation
        client.data_channel = channel
    return channel


def _proto(client) -> str:
    return getattr(client, "proto", None) or getattr(getattr(client.settings, "probe", None), "proto", "udp")


def _addresses(client):
    """(source, target) for the echo: from the pushed ifconfig address to --ping-target, else
    the route-gateway, else (net30/p2p) the ifconfig remote end. IPv6 (ifconfig-ipv6: our
    address, then the server's) when --ping-target is IPv6 or no IPv4 address was pushed."""
    push = client.push_reply or {}
    ifconfig = _words(_option(push, "ifconfig"))
    ifconfig6 = _words(_option(push, "ifconfig_ipv6", "ifconfig-ipv6"))
    wanted = client.settings.ping_target
    if ifconfig6 and (_is_ipv6(wanted) or (not ifconfig and wanted is None)):
        return ifconfig6[0].split("/")[0], wanted or (ifconfig6[1] if len(ifconfig6) > 1 else None)
    source = ifconfig[0] if ifconfig else None
    target = wanted or (_words(_option(push, "route_gateway", "route-gateway")) or [None])[0]
    if target is None and len(ifconfig) > 1 and not ifconfig[1].startswith("255."):
        target = ifconfig[1]
    return source, target


def _is_ipv6(address) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def _unusable(source, target, dev_type="tun") -> Optional[str]:
    """Why no echo can be sent between these addresses, or None."""
    if source is None:  # e.g. a bridged tap server that leaves addresses to DHCP
        return "the PUSH_REPLY has no ifconfig address for us"
    if target is None:
        return "the PUSH_REPLY has no route-gateway: give --ping-target"
    if target == "dhcp":
        return "the route-gateway is 'dhcp' (a bridged tap server): give --ping-target"
    try:
        versions = {ipaddress.ip_address(source).version, ipaddress.ip_address(target).version}
    except ValueError:
        return f"cannot ping {target} from {source}: not IP addresses"
    if len(versions) > 1:
        return f"cannot ping {target} from {source}: the tunnel gave us no address of that family"
    if versions == {6} and dev_type == "tap":
        return f"cannot ping {target}: IPv6 through a dev tap server is not done here (no neighbour discovery)"
    return None


# --- the stage ----------------------------------------------------------------------------

def run_data_stage(client) -> Stage:
    """Send ``settings.count`` ICMP echoes through the data channel and count the authenticated replies."""
    from ..transport import TransportError

    facts = {"cipher": None, "key_derivation": None, "sent": 0, "received": 0, "rtt": None}
    client.data_result = facts

    def stage(ok, detail):
        return Stage("data", ok, client.elapsed(), detail, facts)

    try:
        channel = data_channel(client)
    except DataChannelError as error:
        facts.update(cipher=_cipher(client), verdict="data-keys-mismatch")
        return stage(False, f"no data channel: {error}")
    facts.update(cipher=channel.cipher, key_derivation=channel.key_derivation, format=channel.format,
                 peer_id=channel.peer_id, compression=channel.compression, fragment=channel.fragment)
    source, target = _addresses(client)
    facts["dev_type"] = _dev_type(client)
    unusable = _unusable(source, target, facts["dev_type"])
    if unusable:
        facts["verdict"] = "echo-unanswered"
        return stage(False, f"nothing to ping: {unusable}")
    facts.update(source=source, target=target)

    echo = _Echo(client, channel, source, target, EthernetLink(source, target) if facts["dev_type"] == "tap" else None)
    lost = lost_kind = None
    try:
        echo.run(facts)
    except TransportError as error:
        lost, lost_kind = str(error), error.kind
    rtts = echo.rtts
    facts["received"] = len(rtts)
    if rtts:
        facts.update(rtt=sum(rtts) / len(rtts), rtt_min=min(rtts), rtt_max=max(rtts))
    facts["loss"] = round(100.0 * (facts["sent"] - len(rtts)) / facts["sent"], 1) if facts["sent"] else None
    facts.update(keepalive_pings=echo.pings, rejected=len(echo.rejected), unreadable=echo.unreadable)
    verdict, detail = _judge(client, channel, echo, facts, lost, lost_kind)
    if verdict:
        facts["verdict"] = verdict  # what the Client reports (ovpndiag.verdicts)
    return stage(verdict is None, detail)


def _judge(client, channel, echo, facts, lost, lost_kind):
    """(verdict or None when the stage passed, one line) from what the echoes brought back."""
    how = f"{channel.cipher} ({channel.key_derivation}), {channel.format}" + \
        (", dev tap (Ethernet)" if facts.get("dev_type") == "tap" else "") + \
        (f", {channel.compression} compression framing" if channel.compression != "none" else "") + \
        (", --fragment header" if channel.fragment else "")
    sent, answered, target = facts["sent"], len(echo.rtts), facts["target"]
    if answered and not lost:
        return None, f"{how}: {answered}/{sent} echoes to {target} answered, rtt {facts['rtt'] * 1000:.2f} ms"
    if lost and not answered and not echo.pings and _proto(client) == "tcp":
        # over TCP OpenVPN drops the connection when a data packet fails to decrypt (forward.c,
        # "decryption-error"): closed after our echoes with nothing authentic back
        return "data-keys-mismatch", (f"{how}: the server dropped the connection after {sent} data packet"
                                      f"{'s' if sent > 1 else ''} of ours ({lost}); OpenVPN does that over TCP "
                                      "when a data packet fails to decrypt: keys or cipher differ")
    if lost:
        return _LOST_VERDICTS.get(lost_kind, "data-one-way"), \
            f"{how}: connection lost after {sent} echoes to {target} ({answered} answered): {lost}"
    if facts.get("arp") == "unanswered" and not echo.rejected:
        return "echo-unanswered", (f"{how}: no ARP answer from {target}, so no echo was sent "
                                   f"(try --ping-target)")
    if echo.rejected:
        return "data-keys-mismatch", (f"{how}: {sent} echoes to {target} unanswered; {len(echo.rejected)} packets "
                                      f"from the server failed: {echo.rejected[0]} (keys or cipher differ)")
    if echo.pings or echo.unreadable:  # the server's own packets authenticate: the target is silent
        return "echo-unanswered", (f"{how}: {sent} echoes to {target} unanswered, but "
                                   f"{echo.pings + echo.unreadable} packets from the server authenticated "
                                   f"({echo.pings} keepalive pings): the data channel works, {target} does not "
                                   "answer (try --ping-target)")
    return "data-one-way", f"{how}: {sent} echoes to {target} unanswered, nothing came back through the data channel"


_LOST_VERDICTS = {"reset": "connection-reset", "closed": "connection-closed", "unreachable": "unreachable",
                  "refused": "port-closed"}


class _Echo:
    """Echoes sent one at a time, each waited for up to ECHO_INTERVAL (a late answer to an
    earlier one still counts); what came back sorted into answers, keepalive pings and rejects."""

    def __init__(self, client, channel, source, target, ethernet: Optional[EthernetLink] = None):
        self.client, self.channel, self.source, self.target = client, channel, source, target
        self.ethernet = ethernet
        ipv6 = _is_ipv6(source)
        self.build, self.parse = (icmp6_echo_request, parse_icmp6_echo_reply) if ipv6 else \
            (icmp_echo_request, parse_icmp_echo_reply)
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.pending, self.rtts, self.rejected, self.pings, self.unreadable = {}, [], [], 0, 0

    def _wait(self, done, seconds):
        client = self.client
        until = min(client.deadline, time.monotonic() + seconds)
        while not done() and (now := time.monotonic()) < until:
            packet = client.transport_recv(until - now)
            if packet is not None:
                self.take(packet, time.monotonic())

    def resolve(self, attempts) -> bool:
        """dev tap: the target's MAC by ARP, asked up to ``attempts`` times."""
        for _ in range(attempts):
            if time.monotonic() >= self.client.deadline:
                break
            self.client.transport_send(self.channel.seal(self.ethernet.arp_request()))
            self._wait(lambda: self.ethernet.target_mac is not None, ECHO_INTERVAL)
            if self.ethernet.target_mac is not None:
                return True
        return False

    def run(self, facts):
        client = self.client
        count = max(1, int(client.settings.count or 1))
        # Over UDP an echo or its answer may be lost: when none came back, try as often as the probe retries.
        extra = int(getattr(getattr(client.settings, "probe", None), "retries", 0) or 0) \
            if _proto(client) == "udp" else 0
        if self.ethernet and not self.resolve(1 + extra):
            facts["arp"] = "unanswered"
            return
        seq = 0
        while seq < count or (not self.rtts and seq < count + extra):
            if time.monotonic() >= client.deadline:
                break
            seq += 1
            payload = os.urandom(16) + struct.pack("!d", time.time())  # like ping's: ours to match
            self.pending[seq] = (payload, time.monotonic())
            packet = self.build(self.source, self.target, self.ident, seq, payload)
            client.transport_send(self.channel.seal(self.ethernet.frame(packet) if self.ethernet else packet))
            facts["sent"] += 1
            self._wait(lambda: seq not in self.pending, ECHO_INTERVAL)

    def take(self, packet, arrived):
        if not is_data_packet(packet):
            return  # the Client handles control packets; none should come here
        try:
            plaintext = self.channel.open(packet)
        except UnreadablePayload:
            self.unreadable += 1  # authentic, but not for us to read (our echoes' answers are too small)
            return
        except DataChannelError as error:
            self.rejected.append(str(error))
            return
        if plaintext == PING_MAGIC:
            self.pings += 1
            return
        if self.ethernet:
            plaintext, arp_reply = self.ethernet.receive(plaintext)
            if arp_reply:
                self.client.transport_send(self.channel.seal(arp_reply))
            if plaintext is None:
                return
        reply = self.parse(plaintext)
        if reply is None:
            return
        answer_from, answer_to, ident, seq, payload = reply
        sent = self.pending.get(seq)
        if (ident == self.ident and answer_from == self.target and answer_to == self.source and sent
                and sent[0] == payload):
            del self.pending[seq]
            self.rtts.append(arrived - sent[1])


def send_exit_notify(client, copies: Optional[int] = None) -> bool:
    """The explicit-exit-notify (OCC_EXIT) through the data channel, as OpenVPN sends it when the
    server did not announce cc-exit. Over UDP it is sent 3 times (a datagram may be lost; the
    server acts on the first and drops the rest). True when sent; False when no data channel
    can be made (before push) or the connection is gone."""
    from ..transport import TransportError

    if getattr(client, "push_reply", None) is None:
        return False  # no data channel before push
    try:
        channel = data_channel(client)
    except DataChannelError:
        return False
    if copies is None:
        copies = 3 if _proto(client) == "udp" else 1
    try:
        for _ in range(copies):
            client.transport_send(channel.seal(EXIT_NOTIFY))
    except (TransportError, OSError):
        return False
    return True


send_explicit_exit_notify = send_exit_notify  # the name the Client's close() looks for
