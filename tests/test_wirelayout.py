"""wirelayout: the raw-bytes layout read off the Scapy layers is the layers' layout.

Packets built by the layers, with every field set to a value of its own, are read
back through the derived offsets and structs under every wrapping, opcode and ACK
count; a field added to a layer shows up in the derived layout; the cache that
spares the listing Scapy's import is keyed by the sources and read without Scapy.
"""

import marshal
import os
import subprocess
import sys
from struct import calcsize

import pytest
from scapy.fields import ConditionalField, IntField

from ovpndiag import protocol, wirelayout
from ovpndiag.layers import OpenVPN, OpenVPNControl, OpenVPNDataV1, OpenVPNDataV2, Wrapping
from ovpndiag.protocol import CARRIES_WKC, CONTROL_OPCODES, HMAC_SIZES, MAX_ACKS, Opcode, PLAIN

SESSION, REMOTE = 0x1122334455667788, 0xA1A2A3A4A5A6A7A8


def _built(opcode, wrapping, count):
    """A packet the layers build, every field with a value of its own."""
    values = {"opcode": opcode, "session_id": SESSION}
    if wrapping.kind == "tls-auth":
        values.update(hmac=bytes(range(1, wrapping.hmac_size + 1)))
    if wrapping.kind != "none":
        values.update(replay_packet_id=0x0F000001, net_time=1795613910)
    if wrapping.is_tls_crypt:
        values.update(tag=bytes(range(100, 132)))
    if not wrapping.hides_control_fields:
        values.update(acks=[1000 + n for n in range(count)], remote_session_id=REMOTE)
        if opcode != Opcode.P_ACK_V1:
            values.update(message_packet_id=77)
    if opcode in CARRIES_WKC:
        values.update(wkc=b"\x55" * 40 + (42).to_bytes(2, "big"))
    return bytes(OpenVPN(wrapping=wrapping, **values)), values


@pytest.mark.parametrize("wrapping", wirelayout.KNOWN, ids=str)
def test_offsets_and_structs_read_what_the_layers_build(wrapping):
    layout = wirelayout.control_layout(wrapping)
    checked = 0
    for opcode in sorted(CONTROL_OPCODES):
        if opcode in CARRIES_WKC and not wrapping.is_tls_crypt:
            continue  # always read as tls-crypt-v2
        for count in range(MAX_ACKS + 1 if layout.visible else 1):
            data, values = _built(opcode, wrapping, count)
            header = dict(zip(layout.header_names, layout.unpack_header(data)))
            assert header == {name: values[name] for name in layout.header_names}
            for name, (offset, size) in layout.fields.items():  # the offsets too, field by field
                raw = data[offset:offset + size]
                assert raw == values[name] if isinstance(values[name], bytes) else \
                    int.from_bytes(raw, "big") == values[name], (name, wrapping)
            if opcode in CARRIES_WKC:
                assert protocol.wkc_length(data, layout.header) == 42
            checked += 1
            if not layout.visible:
                assert len(data) == layout.header + (42 if opcode in CARRIES_WKC else 0)
                continue
            assert data[layout.header] == count
            after = layout.after_acks[opcode][count]
            read = after.unpack(data, layout.header + 1)
            assert list(read[:count]) == values["acks"]
            assert (read[after.remote_at] if count else None) == (REMOTE if count else None)
            assert (read[after.message_at] if after.message_at is not None else None) == values.get(
                "message_packet_id")
            assert len(data) == layout.header + 1 + after.size + (42 if opcode in CARRIES_WKC else 0)
    assert checked >= (7 * (MAX_ACKS + 1) if layout.visible else 7)


def test_the_layouts_protocol_md_states():
    """Wire offsets as protocol.md gives them (a wrong derivation passes no packet test above
    only by luck: these pin the numbers themselves)."""
    plain = wirelayout.control_layout(PLAIN)
    assert (plain.header, plain.fields) == (9, {"session_id": (1, 8)})
    for digest, size in HMAC_SIZES.items():
        layout = wirelayout.control_layout(Wrapping.tls_auth(digest))
        assert layout.fields == {"session_id": (1, 8), "hmac": (9, size), "replay_packet_id": (9 + size, 4),
                                 "net_time": (13 + size, 4)}
        assert layout.header == 17 + size and layout.replay_at == 9 + size
    crypt = wirelayout.control_layout(Wrapping("tls-crypt"))
    assert crypt.fields == {"session_id": (1, 8), "replay_packet_id": (9, 4), "net_time": (13, 4), "tag": (17, 32)}
    assert (crypt.header, crypt.visible, crypt.shortest) == (49, False, 49)
    assert wirelayout.control_layout(Wrapping("tls-crypt", decrypted=True)).shortest == 50
    assert wirelayout.data_header(Opcode.P_DATA_V1) == 1 and wirelayout.data_header(Opcode.P_DATA_V2) == 4
    assert plain.after_acks[Opcode.P_ACK_V1][0].size == 0  # P_ACK_V1: no message packet-id
    assert plain.after_acks[Opcode.P_CONTROL_V1][0].size == 4
    assert plain.after_acks[Opcode.P_CONTROL_V1][2].size == 2 * 4 + 8 + 4
    assert crypt.trailer_opcodes == frozenset(CARRIES_WKC) and not plain.trailer_opcodes


def test_a_field_added_to_a_layer_shows_up_in_the_layout():
    """Adding a field is one edit in layers.py: here a subclass with a field after the
    session id (under tls-auth only) and one after the message packet-id."""
    fields = list(OpenVPNControl.fields_desc)
    at = [field.name for field in fields].index("session_id") + 1
    fields.insert(at, ConditionalField(IntField("extra", 7), lambda pkt: pkt.wrapping.kind == "tls-auth"))
    fields.append(IntField("trailing", 9))

    class Extended(OpenVPNControl):
        fields_desc = fields

    sha1 = Wrapping.tls_auth("SHA1")
    fixed, header, visible, after, _trailer = wirelayout.derive(sha1, {4: Extended})
    assert [name for name, _offset, _code in fixed] == ["session_id", "extra", "hmac", "replay_packet_id",
                                                        "net_time"]
    assert dict((name, offset) for name, offset, _code in fixed)["hmac"] == 13
    assert header == 9 + 4 + 20 + 8 and visible
    assert after[4][1][0] == ("acks", "remote_session_id", "message_packet_id", "trailing")
    fixed, header, _visible, _after, _trailer = wirelayout.derive(PLAIN, {4: Extended})
    assert [name for name, _offset, _code in fixed] == ["session_id"] and header == 9
    layout = wirelayout.ControlLayout(sha1, wirelayout.derive(sha1, {4: Extended}))
    data = bytes(Extended(wrapping=sha1, session_id=SESSION, extra=0xABCD, acks=[5], remote_session_id=REMOTE))
    assert dict(zip(layout.header_names, layout.unpack_header(data)))["extra"] == 0xABCD
    assert layout.after_acks[4][1].unpack(data, layout.header + 1)[-1] == 9


def test_a_field_that_depends_on_the_ack_count_is_read_at_every_count():
    """derive() asks Scapy for 0, 1 and MAX_ACKS ACKs and stretches one's fields for the
    counts between; a field whose condition tells counts apart makes it read them all."""
    class Counted(OpenVPNControl):
        fields_desc = list(OpenVPNControl.fields_desc) + [
            ConditionalField(IntField("many", 3), lambda pkt: len(pkt.acks or ()) >= 5)]

    after = wirelayout.derive(PLAIN, {4: Counted})[3][4]
    assert [names[-1] for names, _code in after] == ["message_packet_id"] * 5 + ["many"] * 4
    for count, (names, code) in enumerate(after):
        data = bytes(Counted(wrapping=PLAIN, acks=list(range(count)), remote_session_id=REMOTE, many=6))
        assert 9 + 1 + calcsize("!" + code) == len(data), count
    assert after[:5] == wirelayout.derive(PLAIN, {4: OpenVPNControl})[3][4][:5]


def test_data_layouts_come_from_the_data_layers():
    assert wirelayout.data_header(6) == len(bytes(OpenVPNDataV1()))
    assert wirelayout.data_header(9) == len(bytes(OpenVPNDataV2(peer_id=5)))


def _derived_all():
    derived = {tuple(wrapping): wirelayout.derive(wrapping) for wrapping in wirelayout.KNOWN}
    derived["data"] = wirelayout.derive_data()
    return derived


def test_the_cache_holds_what_the_layers_say(tmp_path):
    derived = _derived_all()
    assert marshal.loads(marshal.dumps(derived)) == derived
    path = tmp_path / "wirelayout-test.marshal"
    wirelayout._write_cache(path, derived)
    assert marshal.loads(path.read_bytes()) == derived


def _run(code, cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_a_cached_layout_is_read_without_importing_scapy(tmp_path):
    code = ("import sys\nfrom ovpndiag.wirelayout import control_layout, data_header\nfrom ovpndiag.protocol import "
            "Wrapping\nprint(control_layout(Wrapping.tls_auth('SHA256')).header, data_header(9), 'scapy' in sys.modules)")
    assert _run(code, tmp_path).split() == ["49", "4", "True"]  # first run: derived, then kept
    assert _run(code, tmp_path).split() == ["49", "4", "False"]  # then read back, no Scapy
    (cached,) = (tmp_path / "ovpndiag").glob("wirelayout-*.marshal")
    kept = marshal.loads(cached.read_bytes())
    assert set(kept) == {("tls-auth", 32, False), "data"}  # only what was asked for: one wrapping, data
    assert kept == {key: value for key, value in _derived_all().items() if key in kept}
    code = ("import sys\nfrom ovpndiag.wirelayout import control_layout\nfrom ovpndiag.protocol import PLAIN\n"
            "print(control_layout(PLAIN).header, 'scapy' in sys.modules)")
    assert _run(code, tmp_path).split() == ["9", "True"]  # another wrapping: derived and added
    assert set(marshal.loads(cached.read_bytes())) == {("tls-auth", 32, False), ("none", 20, False), "data"}


def test_a_home_that_cannot_be_written_derives_quietly(tmp_path):
    """A read-only HOME (a nagios user's): no cache, no error, no traceback; the layout
    is derived in the process, and the client's codec works from it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("not a folder")  # (unwritable for root too, who ignores modes)
    home.chmod(0o555)
    env = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    env["HOME"] = str(home)
    code = ("from ovpndiag.client.reliable import CODEC, OpenVPNAck\n"
            "data = CODEC.build(OpenVPNAck, dict(opcode=5, session_id=1, acks=[3], remote_session_id=2))\n"
            "print(len(data), CODEC.read(data).acks, CODEC.layout().header)")
    try:
        for _ in range(2):  # (the second run finds nothing kept either)
            run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            assert (run.returncode, run.stdout.split(), run.stderr) == (0, ["22", "[3]", "9"], "")
        assert (home / ".cache").read_text() == "not a folder" and not list(home.rglob("wirelayout-*"))
    finally:
        home.chmod(0o755)


def test_an_edit_of_the_layers_makes_a_new_cache(tmp_path, monkeypatch):
    """The cache is named by the sources' checksum: an edited layers.py is not read with
    the layout of the old one."""
    for name in wirelayout._SOURCES:
        (tmp_path / name).write_bytes((wirelayout._HERE / name).read_bytes())
    monkeypatch.setattr(wirelayout, "_HERE", tmp_path)
    before = wirelayout.cache_path()
    with open(tmp_path / "layers.py", "a") as layers:
        layers.write("\n# a new field\n")
    assert wirelayout.cache_path() != before
