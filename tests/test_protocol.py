"""protocol: the wire facts in one place - opcodes by name, the --auth digest names, the
plausible TCP frame - against protocol.md, the Scapy layers and every bundled capture."""

import pytest

from captures import ALL_CAPTURES, openvpn_packets
from ovpndiag.layers import OpenVPNHeader
from ovpndiag.protocol import (CARRIES_WKC, CLIENT_RESETS, CONTROL_OPCODES, DATA_OPCODES, HMAC_SIZES,
                               MAX_PLAUSIBLE_FRAME, OPCODES, SERVER_RESETS, Opcode, Wrapping, digest_name,
                               first_byte, plausible_tcp_frame)


def test_opcodes_are_protocol_mds_table():
    # (protocol.md, "First byte": op, name, byte with key id 0)
    table = [(1, "P_CONTROL_HARD_RESET_CLIENT_V1", 0x08), (2, "P_CONTROL_HARD_RESET_SERVER_V1", 0x10),
             (3, "P_CONTROL_SOFT_RESET_V1", 0x18), (4, "P_CONTROL_V1", 0x20), (5, "P_ACK_V1", 0x28),
             (6, "P_DATA_V1", 0x30), (7, "P_CONTROL_HARD_RESET_CLIENT_V2", 0x38),
             (8, "P_CONTROL_HARD_RESET_SERVER_V2", 0x40), (9, "P_DATA_V2", 0x48),
             (10, "P_CONTROL_HARD_RESET_CLIENT_V3", 0x50), (11, "P_CONTROL_WKC_V1", 0x58)]
    assert [(o.value, o.name, first_byte(o)) for o in Opcode] == table
    assert OPCODES == {value: name for value, name, _byte in table}
    assert first_byte(Opcode.P_CONTROL_V1, 3) == 0x23
    for value, name, byte in table:  # and the layers read the byte as that opcode
        assert OpenVPNHeader(bytes([byte])).opcode == value
    assert (CLIENT_RESETS, SERVER_RESETS, CARRIES_WKC, DATA_OPCODES) == ((1, 7, 10), (2, 8), (10, 11), (6, 9))
    assert CONTROL_OPCODES == {1, 2, 3, 4, 5, 7, 8, 10, 11}


@pytest.mark.parametrize("written, name", [("SHA1", "SHA1"), ("sha256", "SHA256"), ("SHA-512", "SHA512"),
                                           (" md5 ", "MD5"), ("sha-224", "SHA224")])
def test_digest_names_as_people_write_them(written, name):
    assert digest_name(written) == name
    assert Wrapping.tls_auth(written).hmac_size == HMAC_SIZES[name]


@pytest.mark.parametrize("written", ["SHA3", "", "BLAKE2", "SHA-1x"])
def test_an_unknown_digest_is_named_with_the_known_ones(written):
    with pytest.raises(ValueError, match=r"unknown --auth digest .*\(use one of MD5, SHA1, SHA224"):
        digest_name(written)


def test_every_captured_packet_is_a_plausible_tcp_frame():
    """The bound must not turn real OpenVPN away: every packet of every bundled capture
    (UDP and TCP, every wrapping, a fragmented 1452-byte one) passes it."""
    packets = [p.data for entry in ALL_CAPTURES if entry["wrapping"] != "static-key" for p in openvpn_packets(entry)]
    assert len(packets) > 1000
    assert all(plausible_tcp_frame(len(data), data[0]) for data in packets)


def test_what_is_not_a_plausible_tcp_frame():
    reset = first_byte(Opcode.P_CONTROL_HARD_RESET_SERVER_V2)
    assert plausible_tcp_frame(MAX_PLAUSIBLE_FRAME, reset) and not plausible_tcp_frame(MAX_PLAUSIBLE_FRAME + 1, reset)
    assert MAX_PLAUSIBLE_FRAME == 2048  # OpenVPN's TLS_CHANNEL_BUF_SIZE (see protocol.py)
    assert plausible_tcp_frame(9, reset) and not plausible_tcp_frame(8, reset)  # op + session id at least
    assert not plausible_tcp_frame(100, 0x60) and not plausible_tcp_frame(100, 0x00)  # opcodes 12 and 0
    assert not plausible_tcp_frame(0x4854, ord("T"))  # "HTTP/1.1 ...": another protocol answered
