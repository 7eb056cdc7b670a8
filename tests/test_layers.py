"""The Scapy layers, built from scratch: golden bytes, computed fields, matching.

The golden layouts are the ones protocol.md states and the real captures show;
test_captures.py proves the same layers on every captured packet.
"""

import struct

import pytest
from scapy.packet import Padding, Raw

from ovpndiag.layers import (
    OPCODES, PLAIN, EarlyNegotiationFlags, EarlyNegotiationTLV, OpenVPN, OpenVPNAck,
    OpenVPNControl, OpenVPNDataV1, OpenVPNDataV2, OpenVPNHeader, OpenVPNReset, OpenVPNTCP,
    Wrapping, from_wire,
)

CLIENT_SID = 0x1122334455667788
SERVER_SID = 0xA1A2A3A4A5A6A7A8


def test_client_reset_is_14_bytes():
    assert bytes(OpenVPNReset(session_id=CLIENT_SID)) == bytes.fromhex("38" "1122334455667788" "00" "00000000")


def test_server_reset_is_26_bytes_and_acks_the_client():
    reply = OpenVPNReset(opcode=8, session_id=SERVER_SID, acks=[0], remote_session_id=CLIENT_SID)
    assert bytes(reply) == bytes.fromhex("40" "a1a2a3a4a5a6a7a8" "01" "00000000" "1122334455667788" "00000000")


@pytest.mark.parametrize("opcode,key_id,byte", [(1, 0, 0x08), (3, 1, 0x19), (4, 0, 0x20), (5, 7, 0x2F),
                                                (6, 0, 0x30), (7, 0, 0x38), (8, 0, 0x40), (9, 2, 0x4A),
                                                (10, 0, 0x50), (11, 0, 0x58)])
def test_first_byte_is_opcode_and_key_id(opcode, key_id, byte):
    pkt = OpenVPN(opcode=opcode, key_id=key_id, **({"wkc": _wkc()} if opcode in (10, 11) else {}))
    assert bytes(pkt)[0] == byte
    again = OpenVPN(bytes(pkt))
    assert (again.opcode, again.key_id) == (opcode, key_id)


@pytest.mark.parametrize("opcode,cls", [(1, OpenVPNReset), (2, OpenVPNReset), (3, OpenVPNControl),
                                        (4, OpenVPNControl), (5, OpenVPNAck), (6, OpenVPNDataV1),
                                        (7, OpenVPNReset), (8, OpenVPNReset), (9, OpenVPNDataV2),
                                        (10, OpenVPNReset), (11, OpenVPNControl), (0, OpenVPNHeader),
                                        (12, OpenVPNHeader), (31, OpenVPNHeader)])
def test_dispatch_picks_the_layout_of_each_opcode(opcode, cls):
    assert type(OpenVPN(opcode=opcode)) is cls
    assert OpenVPN.dispatch_hook(bytes([opcode << 3 | 1])) is cls


def test_control_v1_carries_acks_remote_session_message_id_and_tls_bytes():
    pkt = OpenVPNControl(session_id=CLIENT_SID, acks=[3, 2], remote_session_id=SERVER_SID,
                         message_packet_id=4) / Raw(b"\x16\x03\x01")
    wire = bytes(pkt)
    assert wire == (b"\x20" + struct.pack("!QB", CLIENT_SID, 2) + struct.pack("!II", 3, 2)
                    + struct.pack("!QI", SERVER_SID, 4) + b"\x16\x03\x01")
    back = OpenVPN(wire)
    assert (back.ack_count, back.acks, back.remote_session_id, back.message_packet_id) == (2, [3, 2], SERVER_SID, 4)
    assert back[Raw].load == b"\x16\x03\x01"


def test_no_remote_session_id_without_acks():
    wire = bytes(OpenVPNControl(session_id=CLIENT_SID, message_packet_id=9))
    assert len(wire) == 1 + 8 + 1 + 4
    assert OpenVPN(wire).message_packet_id == 9


def test_ack_has_no_message_packet_id():
    wire = bytes(OpenVPNAck(session_id=CLIENT_SID, acks=[7], remote_session_id=SERVER_SID))
    assert wire == b"\x28" + struct.pack("!QBIQ", CLIENT_SID, 1, 7, SERVER_SID)
    # Four more bytes, where a control packet's message packet-id would be: an ACK leaves them.
    back = OpenVPN(wire + b"\x00\x00\x00\x09")
    assert isinstance(back, OpenVPNAck) and (back.acks, back.remote_session_id) == ([7], SERVER_SID)
    assert not hasattr(back, "message_packet_id") and back[Raw].load == b"\x00\x00\x00\x09"


@pytest.mark.parametrize("digest,size", [("MD5", 16), ("SHA1", 20), ("SHA224", 28), ("SHA256", 32),
                                         ("SHA384", 48), ("SHA512", 64)])
def test_tls_auth_layout_for_every_hmac_size(digest, size):
    wrapping = Wrapping.tls_auth(digest)
    mac = bytes(range(size))
    pkt = OpenVPNReset(session_id=CLIENT_SID, hmac=mac, replay_packet_id=1, net_time=0x5F000000,
                       wrapping=wrapping)
    wire = bytes(pkt)
    assert wire == b"\x38" + struct.pack("!Q", CLIENT_SID) + mac + struct.pack("!II", 1, 0x5F000000) + bytes(5)
    back = OpenVPN(wire, wrapping=wrapping)
    assert (back.hmac, back.replay_packet_id, back.net_time, back.message_packet_id) == (mac, 1, 0x5F000000, 0)


def test_tls_auth_hmac_left_unset_is_zeros_of_the_right_size():
    wire = bytes(OpenVPNReset(session_id=1, wrapping=Wrapping.tls_auth("SHA256")))
    assert len(wire) == 14 + 32 + 8


def test_tls_crypt_layout_hides_the_control_fields():
    wrapping = Wrapping("tls-crypt")
    tag = bytes(range(32))
    wire = bytes(OpenVPNReset(session_id=CLIENT_SID, replay_packet_id=1, net_time=2, tag=tag,
                              ciphertext=b"\x99" * 5, wrapping=wrapping))
    assert wire == b"\x38" + struct.pack("!QII", CLIENT_SID, 1, 2) + tag + b"\x99" * 5
    assert len(wire) == 54  # a tls-crypt client reset, as on the wire
    back = OpenVPN(wire, wrapping=wrapping)
    assert back.ciphertext == b"\x99" * 5
    assert "ack_count" not in back.fields and "message_packet_id" not in back.fields


def test_tls_crypt_decrypted_layout_dissects_the_plaintext():
    wrapping = Wrapping("tls-crypt", decrypted=True)
    wire = bytes(OpenVPNReset(opcode=8, session_id=SERVER_SID, replay_packet_id=1, net_time=2,
                              acks=[0], remote_session_id=CLIENT_SID, wrapping=wrapping))
    back = OpenVPN(wire, wrapping=wrapping)
    assert (back.acks, back.remote_session_id, back.message_packet_id) == ([0], CLIENT_SID, 0)
    assert len(wire) == 66  # a tls-crypt server reset, as on the wire


def _wkc(size=299):
    return b"\xee" * (size - 2) + struct.pack("!H", size)


def test_wkc_trailer_is_appended_last_and_read_from_the_end():
    wire = bytes(OpenVPNReset(opcode=10, session_id=CLIENT_SID, replay_packet_id=0x0F000001,
                              ciphertext=b"\x55" * 5, wkc=_wkc()))
    assert wire.endswith(_wkc()) and wire[49:54] == b"\x55" * 5
    back = OpenVPN(wire)
    assert back.effective_wrapping.kind == "tls-crypt-v2"  # opcode 10 is tls-crypt-v2 by definition
    assert (back.wkc, back.ciphertext, back.replay_packet_id) == (_wkc(), b"\x55" * 5, 0x0F000001)
    assert bytes(back) == wire


def test_wkc_control_decrypted_keeps_tls_bytes_before_the_trailer():
    wrapping = Wrapping("tls-crypt-v2", decrypted=True)
    pkt = OpenVPNControl(opcode=11, session_id=CLIENT_SID, acks=[0], remote_session_id=SERVER_SID,
                         message_packet_id=1, wkc=_wkc(300), wrapping=wrapping) / Raw(b"\x16\x03\x01\x00")
    wire = bytes(pkt)
    assert wire.endswith(_wkc(300))
    back = OpenVPN(wire, wrapping=wrapping)
    assert back[Raw].load == b"\x16\x03\x01\x00" and back.wkc == _wkc(300)


def test_early_negotiation_tlv_in_server_reset():
    reply = OpenVPNReset(opcode=8, session_id=SERVER_SID, acks=[0], remote_session_id=CLIENT_SID,
                         tlvs=[EarlyNegotiationFlags(flags="RESEND_WKC")])
    wire = bytes(reply)
    assert wire.endswith(bytes.fromhex("0001 0002 0001"))
    tlv = OpenVPN(wire).tlvs[0]
    assert isinstance(tlv, EarlyNegotiationFlags) and tlv.flags.RESEND_WKC
    assert tlv.sprintf("%type%") == "EARLY_NEG_FLAGS"


def test_unknown_tlv_keeps_its_value_and_optional_flag():
    tlv = EarlyNegotiationTLV(bytes.fromhex("8007 0003 616263"))
    assert (tlv.optional, tlv.type, tlv.length, tlv.value) == (1, 7, 3, b"abc")


def test_data_v2_peer_id_and_v1():
    wire = bytes(OpenVPNDataV2(key_id=1, peer_id=0xABCDEF) / Raw(b"payload"))
    assert wire == b"\x49\xab\xcd\xefpayload"
    back = OpenVPN(wire)
    assert (back.key_id, back.peer_id, back[Raw].load) == (1, 0xABCDEF, b"payload")
    assert bytes(OpenVPNDataV1() / Raw(b"x")) == b"\x30x"


def test_tcp_framing_fills_the_length_and_chains_packets():
    first, second = OpenVPNReset(session_id=CLIENT_SID), OpenVPNAck(session_id=1, acks=[0], remote_session_id=2)
    wire = bytes(OpenVPNTCP(packet=first) / OpenVPNTCP(packet=second))
    assert wire == struct.pack("!H", 14) + bytes(first) + struct.pack("!H", len(second)) + bytes(second)
    back = OpenVPNTCP(wire)
    assert back.length == 14 and back.packet.session_id == CLIENT_SID
    assert back[OpenVPNTCP:2].packet.acks == [0]


def test_tcp_partial_frame_is_left_as_padding_for_the_next_segment():
    whole = bytes(OpenVPNTCP(packet=OpenVPNReset(session_id=CLIENT_SID)))
    back = OpenVPNTCP(whole + whole[:5])
    assert back[Padding].load == whole[:5]
    assert OpenVPNTCP.tcp_reassemble(whole[:5], {}, {}) is None
    assert OpenVPNTCP.tcp_reassemble(whole, {}, {}).packet.session_id == CLIENT_SID


def test_tcp_frame_passes_its_wrapping_to_the_packet():
    wrapping = Wrapping.tls_auth("SHA512")
    wire = bytes(OpenVPNTCP(packet=OpenVPNReset(session_id=1, wrapping=wrapping)))
    assert len(OpenVPNTCP(wire, wrapping=wrapping).packet.hmac) == 64


def test_server_reset_answers_the_client_reset_it_echoes():
    probe = OpenVPNReset(session_id=CLIENT_SID)
    reply = OpenVPN(bytes(OpenVPNReset(opcode=8, session_id=SERVER_SID, acks=[0], remote_session_id=CLIENT_SID)))
    other = OpenVPN(bytes(OpenVPNReset(opcode=8, session_id=SERVER_SID, acks=[0], remote_session_id=99)))
    assert reply.answers(probe) and not other.answers(probe) and not probe.answers(reply)


def test_summary_names_opcode_session_and_acks():
    text = OpenVPN(bytes(OpenVPNReset(opcode=8, session_id=SERVER_SID, acks=[0],
                                      remote_session_id=CLIENT_SID))).summary()
    assert "P_CONTROL_HARD_RESET_SERVER_V2" in text and "a1a2a3a4a5a6a7a8" in text and "acks=[0]" in text


# protocol.md's table of first bytes: opcode, name, and the layer a packet of it dissects as.
OPCODE_TABLE = [
    (1, "P_CONTROL_HARD_RESET_CLIENT_V1", OpenVPNReset), (2, "P_CONTROL_HARD_RESET_SERVER_V1", OpenVPNReset),
    (3, "P_CONTROL_SOFT_RESET_V1", OpenVPNControl), (4, "P_CONTROL_V1", OpenVPNControl),
    (5, "P_ACK_V1", OpenVPNAck), (6, "P_DATA_V1", OpenVPNDataV1),
    (7, "P_CONTROL_HARD_RESET_CLIENT_V2", OpenVPNReset), (8, "P_CONTROL_HARD_RESET_SERVER_V2", OpenVPNReset),
    (9, "P_DATA_V2", OpenVPNDataV2), (10, "P_CONTROL_HARD_RESET_CLIENT_V3", OpenVPNReset),
    (11, "P_CONTROL_WKC_V1", OpenVPNControl),
]


def test_every_opcode_has_its_name_and_layer():
    assert OPCODES == {opcode: name for opcode, name, _ in OPCODE_TABLE}
    for opcode, name, layer in OPCODE_TABLE:
        # key_id 5 in the low bits; zeros after (a reset's 13 bytes), and for V3 and WKC_V1, whose
        # layout is tls-crypt-v2's, room for the tag and a WKc length that fits
        rest = bytes(58) + b"\x00\x04" if opcode in (10, 11) else bytes(13)
        pkt = OpenVPN(bytes([opcode << 3 | 5]) + rest)
        assert type(pkt) is layer and (pkt.opcode, pkt.key_id) == (opcode, 5), name
        assert pkt.get_field("opcode").i2repr(pkt, pkt.opcode) == name and name in pkt.summary()


def test_wrapping_names_the_digest():
    assert str(Wrapping.tls_auth("sha256")) == "tls-auth SHA256" and str(PLAIN) == "none"


def test_copies_keep_their_wrapping():
    pkt = OpenVPNReset(session_id=1, wrapping=Wrapping.tls_auth("SHA512"))
    assert pkt.copy().wrapping == pkt.wrapping
    assert len(bytes(pkt.copy())) == 14 + 64 + 8


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"\x00abc", "unknown opcode 0"),
    (b"\x38\x01\x02", "truncated"),
    (bytes.fromhex("28 0000000000000001 09"), "ACK count 9 exceeds 8"),
    (bytes.fromhex("28 0000000000000001 01 00000001 0000000000000002 0000"), "after the ACKs"),
    (bytes.fromhex("38 0000000000000001 00 00000000 0005 0009 0001"), "TLV length"),
    (b"\x50" + bytes(60), "WKc length"),
])
def test_dissect_names_what_is_malformed(data, reason):
    pkt, problem = from_wire(data)
    assert problem is not None and reason in problem
    assert isinstance(pkt, OpenVPN)
