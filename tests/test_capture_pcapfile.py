"""ovpndiag.capture.pcapfile: both file formats in all their variants, and damaged files.

The variants are built from the real frames of udp-plain.pcap; the real pcapng
(tcp-pcapng.pcapng, from dumpcap) is checked against tshark in test_capture_read.
"""

import io
import struct

import pytest

from capture_files import epb, idb, opb, option, pcap, real_records, shb, spb, block
from captures import CAPTURES
from ovpndiag.capture import CaptureError, read_frames, read_transport
from ovpndiag.capture.pcapfile import CHUNK

RECORDS = real_records("udp-plain.pcap")


def frames_of(data, name="test.pcap"):
    f = io.BytesIO(data)
    f.name = name
    return list(read_frames(f))


def read_until_error(data, name="test.pcap"):
    """(frames read, the CaptureError) for a damaged file."""
    f = io.BytesIO(data)
    f.name = name
    frames = []
    with pytest.raises(CaptureError) as error:
        for frame in read_frames(f):
            frames.append(frame)
    message = str(error.value)
    assert "\n" not in message and message.startswith(name + ": ")
    return frames, message


# --------------------------------------------------------------------------- classic pcap

@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_classic_pcap_in_both_byte_orders_and_resolutions(endian, nanoseconds):
    records = [(sec, usec * 1000 if nanoseconds else usec, frame) for sec, usec, frame in RECORDS]
    frames = frames_of(pcap(records, endian=endian, nanoseconds=nanoseconds))
    assert [f.number for f in frames] == list(range(1, len(RECORDS) + 1))
    assert [f.data for f in frames] == [frame for _s, _u, frame in RECORDS]
    assert all(f.linktype == 1 and f.orig_len == len(f.data) for f in frames)
    assert [round(f.time * 1e6) for f in frames] == [sec * 10**6 + usec for sec, usec, _f in RECORDS]


def test_link_type_field_ignores_the_fcs_bits_and_orig_len_is_kept():
    records = [(1, 2, b"\x00" * 60, 1514)]
    data = bytearray(pcap(records, linktype=1))
    data[20:24] = struct.pack("<I", 1 | 0x14000000)          # "FCS present, 4 bytes" bits
    (frame,) = frames_of(bytes(data))
    assert frame.linktype == 1 and frame.orig_len == 1514 and len(frame.data) == 60


def test_a_file_bigger_than_the_read_chunk_is_streamed():
    """Records cross chunk boundaries; reads never exceed one chunk and the first
    frame comes out long before the file has been read."""
    records = (RECORDS * (3 * CHUNK // sum(len(f) + 16 for _s, _u, f in RECORDS) + 1))
    data = pcap(records)

    class Recorder(io.BytesIO):
        sizes = []

        def read(self, size=-1):
            self.sizes.append(size)
            return super().read(size)

    f = Recorder(data)
    frames = read_frames(f)
    first = next(frames)
    assert first.data == RECORDS[0][2] and f.tell() <= CHUNK + 24
    rest = list(frames)
    assert len(rest) + 1 == len(records)
    assert [fr.data for fr in rest[-len(RECORDS):]] == [frame for _s, _u, frame in RECORDS]
    assert all(0 < size <= CHUNK for size in Recorder.sizes)


# --------------------------------------------------------------------------- pcapng

@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_blocks_of_every_kind(endian):
    frames = [frame for _s, _u, frame in RECORDS[:6]]
    t0 = RECORDS[0][0] * 10**6 + RECORDS[0][1]
    data = b"".join([
        shb(endian),
        block(4, b"\0" * 8, endian),                                     # name resolution: skipped
        idb(1, tsresol=None, endian=endian),                             # 0: microseconds by default
        idb(113, tsresol=9, endian=endian),                              # 1: nanoseconds
        idb(101, tsresol=0x80 | 20, tsoffset=1000, endian=endian),       # 2: 2^-20 s, +1000 s
        epb(0, t0, frames[0], endian=endian, options=option(1, b"comment", endian) + option(0, b"", endian)),
        epb(1, t0 * 1000 + 789, frames[1], orig=1500, endian=endian),
        epb(2, 5 << 20 | 1 << 19, frames[2], endian=endian),              # 5.5 s + 1000 s
        block(5, b"\0" * 20, endian),                                    # interface statistics: skipped
        block(0x40000BAD, b"custom", endian),                            # custom block: skipped
        spb(frames[3], endian=endian),                                   # interface 0, no time
        opb(1, t0 * 1000, frames[4], endian=endian),
    ])
    got = frames_of(data, "x.pcapng")
    assert [(f.number, f.linktype, f.data) for f in got] == [
        (1, 1, frames[0]), (2, 113, frames[1]), (3, 101, frames[2]), (4, 1, frames[3]), (5, 113, frames[4])]
    assert round(got[0].time * 1e6) == t0 and got[1].orig_len == 1500
    assert abs(got[1].time - (t0 / 1e6 + 789e-9)) < 1e-6
    assert got[2].time == 1005.5 and got[3].time == 0.0


def test_a_new_section_resets_interfaces_and_may_change_byte_order():
    frames = [frame for _s, _u, frame in RECORDS[:2]]
    data = shb("<") + idb(1, endian="<") + epb(0, 10**6, frames[0]) + \
        shb(">") + idb(276, endian=">") + epb(0, 2 * 10**6, frames[1], endian=">")
    got = frames_of(data, "x.pcapng")
    assert [(f.linktype, f.data, f.time) for f in got] == [(1, frames[0], 1.0), (276, frames[1], 2.0)]


def test_simple_packet_block_is_cut_to_the_snap_length():
    data = shb() + idb(1, snaplen=64) + spb(bytes(range(100)), orig=100)
    (frame,) = frames_of(data, "x.pcapng")
    assert frame.data == bytes(range(64)) and frame.orig_len == 100


# --------------------------------------------------------------------------- damaged files

def test_not_a_capture_and_empty_files(tmp_path):
    readme = CAPTURES / "README.md"
    with pytest.raises(CaptureError, match=r"README.md: not a pcap or pcapng file$"):
        list(read_frames(readme))
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError, match=r"empty.pcap: empty file"):
        list(read_transport(empty))
    with pytest.raises(CaptureError, match=r"missing.pcap: No such file"):
        list(read_transport(tmp_path / "missing.pcap"))
    with pytest.raises(CaptureError, match=r"Is a directory"):
        list(read_transport(tmp_path))
    _, message = read_until_error(pcap([])[:10])
    assert "file header truncated (10 of 24 bytes)" in message


def test_a_capture_cut_in_the_middle_of_a_record(tmp_path):
    """The real file cut 52 bytes into frame 5's packet: frames 1-4 come out, then the error."""
    data = (CAPTURES / "udp-plain.pcap").read_bytes()
    offset = 24 + sum(16 + len(frame) for _s, _u, frame in RECORDS[:4])
    size = len(RECORDS[4][2])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:offset + 16 + 52])
    with pytest.raises(CaptureError) as error:
        datagrams = []
        for d in read_transport(cut):
            datagrams.append(d)
    assert str(error.value) == (f"{cut}: frame 5: record truncated (file ends 52 bytes into a "
                                f"{size}-byte packet)")
    assert [d.frame for d in datagrams] == [1, 2, 3, 4]
    frames, message = read_until_error(data[:offset + 7])
    assert len(frames) == 4 and message.endswith("frame 5: record header truncated "
                                                 "(file ends 7 bytes into the 16-byte header)")


def test_a_corrupt_record_length():
    data = bytearray((CAPTURES / "udp-plain.pcap").read_bytes())
    offset = 24 + sum(16 + len(frame) for _s, _u, frame in RECORDS[:9])
    data[offset + 8:offset + 12] = struct.pack("<I", 2**31)
    frames, message = read_until_error(bytes(data))
    assert [f.data for f in frames] == [frame for _s, _u, frame in RECORDS[:9]]
    assert message == "test.pcap: frame 10: corrupt record: captured length 2147483648 exceeds 262144 bytes"


def _pcapng_with_damage(damage):
    frames = [frame for _s, _u, frame in RECORDS[:3]]
    good = shb() + idb(1) + b"".join(epb(0, 10**6 * n, frame) for n, frame in enumerate(frames))
    return good, damage(epb(0, 0, RECORDS[3][2]))


@pytest.mark.parametrize("damage, expected", [
    (lambda b: b[:4] + struct.pack("<I", 2**31) + b[8:], "block length 2147483648 exceeds"),
    (lambda b: b[:4] + struct.pack("<I", len(b) - 2) + b[8:], "is not a multiple of 4"),
    (lambda b: b[:4] + struct.pack("<I", 8) + b[8:], "is not a multiple of 4 of at least 12"),
    (lambda b: b[:-4] + struct.pack("<I", len(b) + 4), "trailing block length"),
    (lambda b: b[:20] + struct.pack("<I", 5000) + b[24:], "captured length 5000 does not fit"),
    (lambda b: b[:8] + struct.pack("<I", 7) + b[12:], "undeclared interface 7"),
    (lambda b: b[:len(b) // 2], "block truncated (file ends"),
    (lambda b: b[:6], "block header truncated (file ends 6 bytes"),
])
def test_a_bad_pcapng_block(damage, expected):
    good, bad = _pcapng_with_damage(damage)
    frames, message = read_until_error(good + bad, "x.pcapng")
    assert [f.data for f in frames] == [frame for _s, _u, frame in RECORDS[:3]]
    assert message.startswith("x.pcapng: frame 4: ") and expected in message


def test_a_bad_section_header():
    data = shb()
    frames, message = read_until_error(data[:8] + b"\x11\x22\x33\x44" + data[12:], "x.pcapng")
    assert not frames and "bad byte-order magic" in message and "frame 1" in message


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_times_far_from_1970_keep_their_differences_exact(endian):
    """if_tsoffset/if_tsresol can put frames in any year: where a float is coarser than a
    microsecond the time is an Instant, whose differences are exact; elsewhere a float."""
    import pickle
    from fractions import Fraction

    from ovpndiag.capture.pcapfile import Instant

    frames = [frame for _s, _u, frame in RECORDS[:3]]
    data = b"".join([
        shb(endian),
        idb(1, tsresol=6, tsoffset=10 ** 11, endian=endian),           # 0: year 5138 and on
        idb(1, tsresol=9, tsoffset=-10 ** 11, endian=endian),          # 1: year -1199 and on
        idb(1, tsresol=6, endian=endian),                              # 2: a plain 2026 time
        epb(0, 359411, frames[0], endian=endian),
        epb(0, 359760, frames[1], endian=endian),                      # 349 us later
        epb(1, 7 * 10 ** 9 + 1, frames[2], endian=endian),
        epb(2, 1795613847359411, frames[2], endian=endian),
    ])
    got = frames_of(data, "x.pcapng")
    first, second, before, plain = (f.time for f in got)
    assert (first.__class__, second.__class__, before.__class__, plain.__class__) == (Instant, Instant, Instant, float)
    assert first.exact == 10 ** 11 + Fraction(359411, 10 ** 6) and first == float(first.exact)
    assert second - first == 0.000349  # as floats, the difference would be 0.00035095...
    assert float(second) - float(first) != 0.000349
    assert before.exact == -10 ** 11 + 7 + Fraction(1, 10 ** 9) and before < 0
    assert plain == 1795613847.359411
    assert pickle.loads(pickle.dumps(second)).exact == second.exact
