"""Mangled real capture files through the whole capture reader: a clear CaptureError
or a clean read, never another exception; whatever precedes the damage comes out."""

import io
import random
import struct

from captures import CAPTURES, MANIFEST, mangled_capture
from ovpndiag.capture import CaptureError, Transport, read_frames, read_transport

FILES = {c["file"]: (CAPTURES / c["file"]).read_bytes() for c in MANIFEST}


def test_mangled_captures_raise_only_capture_errors():
    rng = random.Random(20240601)
    names = sorted(FILES)
    outcomes = {"clean": 0, "error": 0}
    for case in range(5000):
        name = names[case % len(names)]
        f = io.BytesIO(mangled_capture(FILES[name], rng))
        f.name = name
        transport = Transport()
        try:
            for d in read_transport(f, transport):
                assert isinstance(d.payload, bytes)
            outcomes["clean"] += 1
        except CaptureError as e:
            message = str(e)
            assert message.startswith(name + ": ") and "\n" not in message, message
            outcomes["error"] += 1
    assert outcomes["clean"] > 500 and outcomes["error"] > 500


def complete_frames_before(data, cut):
    """How many frames of a file lie wholly before byte ``cut`` (walking its records)."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":                   # pcapng (little-endian, as dumpcap writes)
        count, off = 0, 0
        while off + 12 <= len(data):
            block_type, length = struct.unpack("<II", data[off:off + 8])
            if off + length > cut:
                break
            count += block_type in (2, 3, 6)
            off += length
        return count
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    count, off = 0, 24
    while off + 16 <= len(data):
        off += 16 + struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        if off > cut:
            break
        count += 1
    return count


def test_a_cut_file_yields_exactly_the_frames_before_the_cut():
    rng = random.Random(7)
    for name, data in sorted(FILES.items()):
        whole = list(read_frames(io.BytesIO(data)))
        for cut in [rng.randrange(len(data)) for _ in range(20)] + [len(data)]:
            got = []
            try:
                for frame in read_frames(io.BytesIO(data[:cut])):
                    got.append(frame)
            except CaptureError as e:
                assert (f"frame {len(got) + 1}:" in str(e) or "empty file" in str(e) or "too short" in str(e)
                        or "file header truncated" in str(e))
            assert got == whole[:len(got)]
            assert len(got) == complete_frames_before(data, cut)


def test_mangled_captures_read_the_same_on_the_fused_and_the_general_path():
    from test_capture_read import fast_path, general_path

    rng = random.Random(77)
    classic = sorted(name for name, data in FILES.items() if not data.startswith(b"\x0a\x0d\x0d\x0a"))
    for case in range(1500):
        name = classic[case % len(classic)]
        data = mangled_capture(FILES[name], rng)
        fast, general = fast_path(io.BytesIO(data)), general_path(io.BytesIO(data))
        assert fast[0] == general[0] and fast[1] == general[1], (name, case)
        assert fast[2].as_dict() == general[2].as_dict()
