"""Where each field of an OpenVPN packet sits, per wrapping: read off the Scapy layers.

``layers`` is the one definition of the wire format. Code that reads raw bytes
fast - the decoder and the listing, the wrapping inference, the wrappers, the
probe - takes offsets, sizes and structs from here instead of writing them down
again, and this module works them out from the layer classes' ``fields_desc``
(conditions evaluated under each wrapping, sizes from what each field writes):
adding a field or a wrapping in ``layers`` is the one edit.

``control_layout(wrapping)`` -> ``ControlLayout``: the fixed fields before the ACK
array (or before the ciphertext, where tls-crypt hides it) with their offsets, one
struct for them, and by opcode one struct per ACK count for ACKs, remote session
id and message packet-id. ``data_header(opcode)`` is the data packets' header
size; ``plain`` strips a wrapping's fields. (The WKc trailer says its own length:
``protocol.wkc_length`` reads it, for the layers too.)

Importing Scapy costs some 70 ms, more than listing a small capture takes, so
what the field lists say is kept as a small cache (``cache_path()``), named by a
checksum of the sources it comes from (layers.py, protocol.py and this file), much
like bytecode. What it lacks (a first run, an edited layers.py, nowhere to write) is
derived in the process, one wrapping at a time as it is first asked for (under 1 ms
each once Scapy is loaded), and added to it - never per packet. Where it cannot be
written (a read-only HOME, a user without one), every process derives what it asks
for, quietly. The live client's packet codec takes its structs from here too.
"""

import marshal
import os
import zlib
from keyword import iskeyword
from pathlib import Path
from struct import Struct, calcsize
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from .protocol import HMAC_SIZES, MAX_ACKS, OPCODES, PLAIN, WRAPPING_KINDS, Wrapping

# The wrappings readers meet: every kind, every tls-auth digest, tls-crypt opened or not.
KNOWN = [PLAIN] + [Wrapping.tls_auth(size) for size in sorted(set(HMAC_SIZES.values()))] + [
    Wrapping(kind, decrypted=decrypted) for kind in WRAPPING_KINDS if kind not in ("none", "tls-auth")
    for decrypted in (False, True)]

_HERE = Path(__file__).resolve().parent
_CACHES_KEPT = 8
_SOURCES = ("layers.py", "protocol.py", "wirelayout.py")


class AfterAcks(NamedTuple):
    """What follows the ACK count for one opcode and count: its size, one unpack for the
    ACKs, the remote session id and the message packet-id, and where each value is in
    it (None: not there). A tuple, so a hot path takes it apart in one step."""

    size: int
    unpack: Callable
    remote_at: Optional[int]
    message_at: Optional[int]
    names: Tuple[str, ...]
    struct: Struct  # (its pack() builds them, in ``names`` order)

    @classmethod
    def of(cls, names, code) -> "AfterAcks":
        names, struct = tuple(names), Struct("!" + code)
        return cls(struct.size, struct.unpack_from,
                   names.index("remote_session_id") if "remote_session_id" in names else None,
                   names.index("message_packet_id") if "message_packet_id" in names else None, names, struct)


class ControlLayout:
    """A control packet's layout under one wrapping (see the module's docstring).

    ``fields``: name -> (offset, size) of the fixed fields after the first byte
    (session id, and the wrapping's: hmac, replay_packet_id, net_time, tag);
    ``header_struct`` packs and unpacks them (its first byte a pad byte, for op and
    key id), ``unpack_header`` reads them all, in ``header_names`` order, and
    ``read_header(obj, data)`` sets them as attributes of ``obj``, named as the
    layers name them; ``header``: the bytes before the ACK count (or the ciphertext);
    ``visible``: ACKs, message packet-id and payload are in the clear;
    ``after_acks[opcode][count]``: an ``AfterAcks``; ``trailer_opcodes``: the
    opcodes whose last bytes are a WKc.
    """

    __slots__ = ("wrapping", "kind", "hmac_size", "visible", "header", "shortest", "fields", "header_names",
                 "header_struct", "unpack_header", "read_header", "after_acks", "trailer_opcodes", "replay_at")

    def __init__(self, wrapping, description):
        fixed, header, visible, after, trailer_opcodes = description
        self.wrapping, self.kind = wrapping, wrapping.kind
        self.hmac_size = wrapping.hmac_size
        self.visible, self.header = visible, header
        self.shortest = header + (1 if visible else 0)  # what decode() needs to read a packet at all
        self.fields = {name: (offset, calcsize("!" + code)) for name, offset, code in fixed}
        self.header_names = tuple(name for name, _offset, _code in fixed)
        # (the first byte, op and key id, is left to the caller: ``x`` - it is bits, not a field)
        self.header_struct = Struct("!x" + "".join(code for _name, _offset, code in fixed))
        self.unpack_header = self.header_struct.unpack_from
        self.read_header = _reader(self.header_names, self.unpack_header)
        shapes = {}
        self.after_acks = {opcode: shapes.setdefault(tuple(shape), [AfterAcks.of(names, code) for names, code in shape])
                           for opcode, shape in after.items()}  # (opcodes of one shape share its structs)
        self.trailer_opcodes = frozenset(trailer_opcodes)
        self.replay_at = self.fields["replay_packet_id"][0] if "replay_packet_id" in self.fields else None

    def __repr__(self):
        return f"ControlLayout({self.wrapping}, header={self.header}, fields={self.fields})"


def _reader(names, unpack):
    """``read(obj, data)``: ``obj.<name>, ... = unpack(data)``, as fast as written out by
    hand (a loop of setattr costs three times as much, on every control packet)."""
    if not all(name.isidentifier() and not iskeyword(name) for name in names):
        raise ValueError(f"field names {names} are not all identifiers")
    targets = "".join(f"obj.{name}, " for name in names)
    namespace = {"unpack": unpack}
    exec(f"def read(obj, data):\n    {targets}= unpack(data)\n", namespace)  # (names: the layers' own)
    return namespace["read"]


_LAYOUTS: Dict[Wrapping, ControlLayout] = {}
_DATA: Dict[int, int] = {}


def control_layout(wrapping: Wrapping) -> ControlLayout:
    """The layout of control packets under ``wrapping`` (made once per wrapping)."""
    layout = _LAYOUTS.get(wrapping)
    if layout is None:
        layout = _LAYOUTS[wrapping] = ControlLayout(wrapping, _described(tuple(wrapping), lambda: derive(wrapping)))
    return layout


def data_header(opcode: int) -> int:
    """Bytes before a data packet's payload (P_DATA_V1: 1, P_DATA_V2: 4)."""
    if not _DATA:
        _DATA.update(_described("data", derive_data))
    return _DATA[opcode]


def plain(wire: bytes, wrapping: Wrapping, wkc_length: int = 0) -> bytes:
    """The packet as it would be unwrapped: without the wrapping's fields (HMAC, replay
    packet-id, time, tag) and without a trailing WKc of ``wkc_length`` bytes. For
    tls-crypt, ``wire`` must hold the plaintext (``Unwrapped.decrypted``)."""
    start = control_layout(wrapping).header
    return wire[:control_layout(PLAIN).header] + wire[start:len(wire) - wkc_length]


# --- reading the layers ---------------------------------------------------------

def layer_classes() -> dict:
    """opcode -> the layer class ``layers.OpenVPN`` dissects it with."""
    from . import layers

    return {opcode: layers.OpenVPN.dispatch_hook(opcode=opcode) for opcode in OPCODES}


def derive(wrapping: Wrapping, classes: Optional[dict] = None, every_count: bool = False) -> tuple:
    """What ``ControlLayout`` is made from, read off the control layer classes
    (``classes``: opcode -> class, by default ``layer_classes()``) under ``wrapping``:
    (fixed fields [(name, offset, struct code)], header size, visible,
    {opcode: [(names after the ACK count, struct code) by ACK count]}, opcodes
    with a trailer). Opcodes that force a wrapping of their own (10 and 11 are
    always tls-crypt-v2) count only under that wrapping.

    A process that cannot keep the cache derives on every start, so not every ACK
    count is asked of Scapy: none, one and the most; the counts between are one's
    fields with a longer array - unless the most's fields differ from one's (a
    condition on the count), then each count is read (``every_count``)."""
    fixed = header = visible = None
    after, trailer_opcodes = {}, []
    for opcode, cls in (classes or layer_classes()).items():
        by_count, one = [], None
        if not _is_control(cls):
            continue
        for count in range(MAX_ACKS + 1):
            if one is not None and count < MAX_ACKS and not every_count:
                by_count.append(_after(one, count))
                continue
            pkt = cls(wrapping=wrapping, opcode=opcode, ack_count=count, acks=[0] * count)
            if pkt.effective_wrapping != wrapping:
                break  # read under another wrapping than this one
            before, pieces, trailer = _read_fields(pkt)
            if fixed is None:
                fixed, header, visible = before, _end(before), pieces is not None
            elif before != fixed:
                raise ValueError(f"{cls.__name__} has other fields before its ACKs than the others under {wrapping}")
            if count == 0 and trailer:
                trailer_opcodes.append(opcode)
            if pieces is None:
                continue
            if count == 1:
                one = pieces
            elif count == MAX_ACKS and one is not None and pieces != one and not every_count:
                return derive(wrapping, classes, every_count=True)
            by_count.append(_after(pieces, count))
        if by_count:
            after[opcode] = by_count
    return fixed, header, visible, after, trailer_opcodes


def _after(pieces, count):
    """(names, struct code) of what follows the ACK count, for ``count`` ACKs."""
    names, codes = [], []
    for name, code, listed in pieces:
        if listed:
            names.extend([name] * count)
            codes.append(f"{count}{code}" if count else "")
        else:
            names.append(name)
            codes.append(code)
    return tuple(names), "".join(codes)


def _is_control(cls):
    return any(field.name == "session_id" for field in cls.fields_desc)


def _end(fixed):
    if not fixed:
        return 1
    _name, offset, code = fixed[-1]
    return offset + calcsize("!" + code)


def _read_fields(pkt):
    """([(name, offset, code)] of the fixed fields after the first byte and before
    the ACK count or the ciphertext; [(name, code, whether it is the ACK array and
    ``code`` one item's)] of what follows the ACK count up to the payload, or None
    where the rest is ciphertext; whether a field is read from the end of the packet)."""
    from scapy.fields import (ConditionalField, FieldLenField, FieldListField, StrFixedLenField, StrLenField,
                              _BitField, _StrField)

    def takes_the_rest(field):
        return isinstance(field, _StrField) and not isinstance(field, (StrFixedLenField, StrLenField))

    fixed, offset, bits = [], 0, 0
    after_count = None
    trailer = False
    for field in pkt.fields_desc:
        if isinstance(field, ConditionalField):
            if not field._evalcond(pkt):
                continue
            field = field.fld
        if getattr(field, "at_end", False):  # (the WKc: taken from the end, not here)
            trailer = True
        elif isinstance(field, _BitField):  # opcode and key id share the first byte
            bits += field.size
            offset, bits = offset + bits // 8, bits % 8
        elif takes_the_rest(field):
            break  # the ciphertext, or the payload after the ACKs
        elif after_count is not None:  # the ACK array and what follows it
            if isinstance(field, FieldListField):
                after_count.append((field.name, _code(pkt, field.field, 0), True))
            else:
                after_count.append((field.name, _code(pkt, field), False))
        elif isinstance(field, FieldLenField):  # the ACK count: what follows depends on it
            after_count = []
        else:
            code = _code(pkt, field)
            fixed.append((field.name, offset, code))
            offset += calcsize("!" + code)
    return fixed, after_count, trailer


def _code(pkt, field, value=None):
    """The struct code of a fixed-size field: its own format where that is what it
    writes, else that many bytes."""
    size = len(field.addfield(pkt, b"", pkt.getfieldval(field.name) if value is None else value))
    fmt = getattr(field, "fmt", "")
    return fmt[-1] if fmt[-1:] in ("B", "H", "I", "Q") and calcsize(fmt) == size else f"{size}s"


def derive_data() -> dict:
    """opcode -> the header size of each data packet's layer."""
    return {opcode: _end(_read_fields(cls())[0]) for opcode, cls in layer_classes().items() if not _is_control(cls)}


# --- the cache ----------------------------------------------------------------

_DESCRIPTIONS = {}  # what the cache held, and what was derived since: wrapping tuple (or "data") -> description
_CACHE = []  # [its path, or None where there is none], once looked for


def _described(key, derive_it):
    """The description under ``key``: from the cache, else derived now and added to it."""
    if not _CACHE:
        path = cache_path()
        _CACHE.append(path)
        try:
            _DESCRIPTIONS.update(marshal.loads(path.read_bytes()))
        except (OSError, ValueError, EOFError, TypeError, AttributeError):  # (none yet, unreadable, no home)
            pass
    description = _DESCRIPTIONS.get(key)
    if description is None:
        description = _DESCRIPTIONS[key] = derive_it()
        if _CACHE[0] is not None:
            _write_cache(_CACHE[0], _DESCRIPTIONS)
    return description


def _fingerprint() -> int:
    crc = 0
    for name in _SOURCES:
        crc = zlib.crc32((_HERE / name).read_bytes(), crc)
    return crc


def cache_path() -> Optional[Path]:
    """Where the derived layouts are kept: the user's cache folder (not __pycache__,
    which PYTHONDONTWRITEBYTECODE would leave unwritten), named by the sources' checksum,
    so an edit of layers.py is seen at the next run. None without a home to keep it in."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return Path(base) / "ovpndiag" / f"wirelayout-{_fingerprint():08x}.marshal"


def _write_cache(path, descriptions):
    """Whole or not at all (another process may read it meanwhile); only the newest few
    kept (several checkouts or versions may take turns). Where nothing may be written,
    the next run derives again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = sorted(path.parent.glob("wirelayout-*.marshal"), key=lambda old: old.stat().st_mtime)
        for old in kept[:-_CACHES_KEPT]:
            old.unlink(missing_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(marshal.dumps(dict(descriptions)))
        os.replace(temporary, path)
    except OSError:
        pass
