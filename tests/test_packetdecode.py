"""The fast decoder and the Scapy layers are one definition: on every packet of
every real capture, and on tens of thousands of mangled packets under every
wrapping, they agree field by field and on why a packet is malformed."""

import random

import pytest
from scapy.packet import Raw

from captures import MANIFEST, mangled_packet, openvpn_packets, wrapping_of
from ovpndiag.dissect.packetdecode import decode_packet as decode
from ovpndiag.layers import (PLAIN, EarlyNegotiationFlags, OpenVPNDataV1, OpenVPNDataV2, Wrapping, from_wire)

WRAPPINGS = [Wrapping(), Wrapping.tls_auth("MD5"), Wrapping.tls_auth("SHA1"), Wrapping.tls_auth("SHA256"),
             Wrapping.tls_auth("SHA512"), Wrapping("tls-crypt"), Wrapping("tls-crypt", decrypted=True),
             Wrapping("tls-crypt-v2"), Wrapping("tls-crypt-v2", decrypted=True)]


def from_layers(data, wrapping):
    """The same dict, read off the Scapy layers."""
    pkt, problem = from_wire(data, wrapping)
    if problem:
        return {"malformed": problem}
    fields = {"opcode": pkt.opcode_name, "opcode_value": pkt.opcode, "key_id": pkt.key_id}
    if isinstance(pkt, (OpenVPNDataV1, OpenVPNDataV2)):
        if isinstance(pkt, OpenVPNDataV2):
            fields["peer_id"] = pkt.peer_id
        fields["payload_len"] = len(pkt.payload)
        fields["_payload_offset"] = len(data) - len(pkt.payload)
        return fields
    fields["wrapping"] = pkt.effective_wrapping.kind
    if fields["wrapping"] == "tls-auth":
        fields["hmac_size"] = pkt.effective_wrapping.hmac_size
    fields["session_id"] = pkt.session_id
    for name in ("hmac", "tag"):
        if name in pkt.fields:
            fields["_" + name] = pkt.getfieldval(name)
    for name in ("replay_packet_id", "net_time", "remote_session_id", "message_packet_id"):
        if name in pkt.fields:
            fields[name] = pkt.getfieldval(name)
    if "wkc" in pkt.fields:
        fields["wkc_len"] = len(pkt.wkc)
    if "ciphertext" in pkt.fields:
        fields["ciphertext_len"] = len(pkt.ciphertext)
        return fields
    fields["acks"] = list(pkt.acks)
    if "remote_session_id" not in pkt.fields:
        fields.pop("remote_session_id", None)
    if "tlvs" in pkt.fields:
        fields["_tlvs"] = [(t.optional, t.type, t.value if not isinstance(t, EarlyNegotiationFlags)
                            else int(t.flags).to_bytes(2, "big")) for t in pkt.tlvs]
        payload = sum(4 + len(value) for _, _, value in fields["_tlvs"])
    else:
        payload = len(pkt[Raw].load) if Raw in pkt else 0
    fields["payload_len"] = payload
    fields["_payload_offset"] = len(data) - payload - fields.get("wkc_len", 0)
    return fields


def comparable(record):
    """The Record decode() filled, as from_layers() names its fields."""
    if record.malformed is not None:
        return {"malformed": record.malformed}
    fields = record.as_dict()
    for name, value in (("_hmac", record.hmac), ("_tag", record.tag), ("_payload_offset", record.payload_offset),
                        ("_tlvs", record.raw_tlvs)):
        if value is not None:
            fields[name] = value
    return fields


def test_data_and_unknown_opcodes_decode_like_the_layers():
    for data in (b"\x48\x00\x00\x07payload", b"\x30xyz", b"\x49\x00", b"\x00abc", b"\xf8", b""):
        for wrapping in WRAPPINGS[:2]:
            agree(data, wrapping)


def agree(data, wrapping):
    fast, layered = comparable(decode(data, wrapping)), from_layers(data, wrapping)
    assert fast == layered, f"{data.hex()} as {wrapping}"


REAL = [(p.data, wrapping_of(capture, p)) for capture in MANIFEST for p in openvpn_packets(capture)]


def test_every_captured_packet_decodes_like_the_layers():
    assert len(REAL) > 300
    for data, wrapping in REAL:
        agree(data, wrapping)
        assert decode(data, wrapping).malformed is None


def _mangled(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        yield mangled_packet(rng.choice(REAL)[0], rng)


@pytest.mark.parametrize("seed", range(3))
def test_mangled_packets_decode_like_the_layers(seed):
    for data in _mangled(seed, 1200):
        for wrapping in WRAPPINGS:
            agree(data, wrapping)


@pytest.mark.parametrize("seed", range(2))
def test_the_inferences_quick_no_is_a_no_of_plausible(seed):
    """infer._clock_rules_out skips the decode of candidates whose replay packet-id or
    net time cannot be right: it may only say no where plausible() says no too, and it
    must say no to most wrong candidates, or it saves nothing."""
    from ovpndiag.dissect.infer import CANDIDATES, _clock_rules_out, plausible

    packets = [data for data, _wrapping in REAL] + list(_mangled(seed, 1500))
    ruled_out = 0
    for data in packets:
        now = 1.7e9 if data[:1] and data[0] % 2 else 0.0  # the time checks with and without a clock
        for wrapping in CANDIDATES:
            if _clock_rules_out(data, wrapping, now):
                ruled_out += 1
                assert not plausible(decode(data, wrapping), None, now), (data.hex(), wrapping)
    assert ruled_out > len(packets)


def test_a_field_added_to_a_layer_needs_its_record_slot(monkeypatch):
    """A header field added in layers.py reaches decode_packet through wirelayout; without
    a Record slot (a JSON key) for it, the first packet says so by name."""
    from scapy.fields import IntField

    from ovpndiag import wirelayout
    from ovpndiag.dissect import packetdecode
    from ovpndiag.layers import OpenVPNControl

    fields = list(OpenVPNControl.fields_desc)
    fields.insert([field.name for field in fields].index("session_id") + 1, IntField("extra", 7))

    class Extended(OpenVPNControl):
        fields_desc = fields

    layout = wirelayout.ControlLayout(PLAIN, wirelayout.derive(PLAIN, {4: Extended}))
    assert layout.header_names == ("session_id", "extra")
    monkeypatch.setattr(packetdecode, "control_layout", lambda wrapping: layout)
    monkeypatch.setattr(packetdecode, "_LAYOUTS", {})
    with pytest.raises(TypeError, match="'extra'"):
        decode(bytes(Extended(session_id=1, message_packet_id=2)), PLAIN)
