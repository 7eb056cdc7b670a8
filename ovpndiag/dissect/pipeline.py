"""The dissect pipeline as a library: capture files in; OpenVPN packet records,
rendered lines or session summaries out. ``ovpndiag.dissect.open`` is this
module's ``open``; ``ovpndiag dissect`` is a thin layer over it.

    from ovpndiag import dissect
    from ovpndiag.render.line import packet_line

    with dissect.open(["vpn.pcap"], ports=[12345], tls_auth="ta.key") as run:
        for record in run.records():               # dissect.record.Record, in frame order
            print(packet_line(record))
        for summary in run.sessions():             # what --sessions shows, as dicts
            print(summary["client"], summary["wrapping"], summary["hmac_valid"])

A run reads its files one after the other; each is a ``CaptureFile`` whose
``batches()`` yields lists of Records, or of rendered lines when given a renderer
(``LISTING``: the one-line listing, through its fast path). Lines of a big file
are made by parallel worker processes (``jobs``; see ``parallel``) and come out
the same as one reader's. Once its batches are read, a file says what it held:
``frames``, ``skipped`` (frames without UDP or TCP), ``tally`` (payloads that are
not shown OpenVPN packets, by kind), ``key_verdicts`` (what the user's keys
opened), ``error`` (why it could not be read to its end, after everything
readable was delivered) and ``summaries()`` (--sessions).

Errors in what the user gave (key files, a profile, ``auth``, the output file for
decrypted packets) raise at ``open``: keys.KeyFileError, settings.SettingsError,
pcapout.WriteError. A damaged capture raises nothing: it sets ``error``.
"""

import builtins
import os
import sys
from typing import Callable, Iterator, List, Optional, Sequence

from .reader import Options

LISTING = "listing"  # render= for the one-line listing (ListingReader's fast path; lines as render.line's)
COUNT = "count"  # render= for --sessions: batches are numbers of packets (each only counted in its session)
PROGRESS_EVERY = 50000  # datagrams (packets, with workers) between calls of ``progress``
BATCH = 1024  # packets handed out together (fewer hand-offs: the listing's per-packet cost is small)


def open(paths, *, ports: Sequence[int] = (), wrapping: Optional[str] = None, auth: Optional[str] = None,
         tls_auth=None, tls_crypt=None, tls_crypt_v2=None, key_direction=None, config=None,
         sessions: bool = False, tls_details: bool = False, jobs: Optional[int] = None,
         write_decrypted=None, frames=None, tune_gc: bool = False, display_filter=None) -> "Dissection":
    """A dissection of ``paths`` (a path, or a list; ``-`` is standard input;
    pcap, pcapng, gzip-compressed or not). Named like the built-in ``open`` (and
    ``gzip.open``): it opens what the files are read with, and is closed with them.

    ``ports``: read these as OpenVPN too (1194 always is; others are recognised
    from their packets). ``wrapping`` ("none", "tls-auth", "tls-crypt",
    "tls-crypt-v2") and ``auth`` (a digest) override what is inferred per flow.
    ``tls_auth``, ``tls_crypt``, ``tls_crypt_v2``: key files (or keys.StaticKey /
    tls-crypt-v2 key objects) that verify HMACs or open tls-crypt; ``config``: a
    .ovpn profile to take keys, key-direction and auth from (what is given here
    wins). ``sessions``: keep per-session summaries. ``tls_details``: parse TLS
    messages (versions, suites, certificates) into ``Record.tls_details``.
    ``jobs``: processes for a big file's lines (default: one per CPU up to 4 for
    files of 16 MB or more; 1: this process only). ``write_decrypted``: a pcap path
    to write every packet to with tls-crypt removed (never overwritten).
    ``frames``: a capture.keptframes.KeptFrames to keep each packet's frame in (-V).
    ``tune_gc``: let the cyclic garbage collector run less often (see
    ``collect_less``), as the command line does: faster, and global to the process.
    ``display_filter``: a -Y filter (text, or displayfilter.compile_filter's predicate):
    ``records()``, ``lines()`` and ``write_decrypted`` then take only the packets that
    match, ``sessions()`` only the sessions with one (displayfilter.FilterError for a bad one)."""
    keep = display_filter
    if isinstance(keep, str):
        from .displayfilter import compile_filter

        keep = compile_filter(keep)
    options, keys_given = reader_options(ports=ports, wrapping=wrapping, auth=auth, tls_auth=tls_auth,
                                         tls_crypt=tls_crypt, tls_crypt_v2=tls_crypt_v2,
                                         key_direction=key_direction, config=config, sessions=sessions,
                                         tls_details=tls_details)
    writer = None
    if write_decrypted:
        from ..pcapout import CaptureWriter

        writer = CaptureWriter(write_decrypted)
    if tune_gc:
        collect_less()
    return Dissection([paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths), options,
                      keys_given, jobs, writer, frames, keep)


def reader_options(*, ports=(), wrapping=None, auth=None, tls_auth=None, tls_crypt=None, tls_crypt_v2=None,
                   key_direction=None, config=None, sessions=False, tls_details=False):
    """The reader's Options from what a user gives, and which keys were given directly
    (the others came from ``config``): (Options, {wrapping kind: True if given directly})."""
    from ..keys import TLSCryptV2ClientKey, TLSCryptV2ServerKey
    from ..profile import control_keys, overlay, read_profile
    from ..protocol import digest_name  # not .layers: the listing and JSON never import Scapy
    from ..settings import SettingsError
    from .infer import candidates_for
    from .keyring import KeyRing

    profile = read_profile(config) if config else None
    merged = overlay(profile, auth=auth, key_direction=key_direction)
    try:
        digest = digest_name(merged.auth) if merged.auth else None
    except ValueError as error:
        raise SettingsError(str(error)) from None
    digest = digest if wrapping in (None, "tls-auth") else None
    given = control_keys(profile, tls_auth, tls_crypt, tls_crypt_v2,
                         v2_types=(TLSCryptV2ClientKey, TLSCryptV2ServerKey))
    keys = KeyRing(tls_auth=given.tls_auth, tls_crypt=given.tls_crypt, tls_crypt_v2=given.tls_crypt_v2,
                   client_key_direction=None if merged.key_direction is None else str(merged.key_direction))
    candidates = candidates_for(wrapping, digest) if (wrapping or digest) else None
    keys_given = {"tls-auth": bool(tls_auth), "tls-crypt": bool(tls_crypt), "tls-crypt-v2": bool(tls_crypt_v2)}
    return Options(ports=ports, candidates=candidates, keys=keys, sessions=sessions,
                   tls_details=tls_details), keys_given


def collect_less():
    """Packets make many short-lived objects and almost no reference cycles (those that
    do, session summaries, live as long as their flow): the cyclic garbage collector
    runs less often, and never again over what the imports made (which forked workers
    then also share untouched). About 1% of a listing's instructions (valgrind)."""
    import gc

    gc.freeze()
    gc.set_threshold(10000, 50, 50)


class Dissection:
    """A run over capture files: iterate it for its ``CaptureFile``s, or take all their
    ``records()``, ``lines()`` or ``sessions()`` at once. ``close()`` (or the ``with``
    block's end) closes the decrypted-packet writer."""

    def __init__(self, paths: List, options: Options, keys_given: dict, jobs: Optional[int] = None,
                 writer=None, frames=None, keep=None):
        self.paths, self.options, self.keys_given = paths, options, keys_given
        self.keys = options.keys
        self.jobs, self.writer, self.frames = jobs, writer, frames
        self.keep = keep  # -Y's predicate on Records (None: every packet)
        self.failed = False  # a file could not be read to its end

    def __iter__(self) -> Iterator["CaptureFile"]:
        for path in self.paths:
            yield CaptureFile(self, path)

    def records(self):
        """Every packet's Record, file after file (those ``display_filter`` keeps)."""
        keep = self.keep
        for capture in self:
            for batch in capture.batches():
                yield from batch if keep is None else filter(keep, batch)

    def lines(self, render=LISTING):
        """Every packet as one line (or ``render(record)``), file after file."""
        keep = self.keep
        if keep is not None:  # (no listing fast path: each packet is a Record to test)
            one = _listing_line(False) if render is LISTING else render
            render = lambda record: one(record) if keep(record) else None  # noqa: E731
        for capture in self:
            for batch in capture.batches(render):
                yield from batch if keep is None else [line for line in batch if line is not None]

    def sessions(self):
        """Every session's summary (``sessions`` is implied), file after file (with
        ``display_filter``: the sessions with a packet that matches)."""
        self.options.sessions = True
        for capture in self:
            matched = None
            if self.keep is not None:
                from .sessionfilter import MatchedSessions

                matched = MatchedSessions()
            for batch in capture.batches(COUNT if matched is None else None):
                if matched is not None:
                    for record in filter(self.keep, batch):
                        matched.add(record)
            summaries = capture.summaries()
            yield from summaries if matched is None else [s for s in summaries if matched.keeps(s)]

    def close(self, failed: bool = False):
        """``failed``: the run did not finish (a file that writes no packet is then removed)."""
        if self.writer is not None:
            self.writer.close(failed=failed or self.failed)
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, kind, _value, _traceback):
        self.close(failed=kind is not None)


class CaptureFile:
    """One file of a run. ``batches()`` reads it (once); then its counts are set."""

    def __init__(self, run: Dissection, path):
        self.run, self.path = run, path
        self.reader = None
        self.packed = None  # the sessions from workers (sessions.PackedSummaries)
        self.frames = self.skipped = 0
        self.tally: dict = {}
        self.key_verdicts: dict = {}
        self.error: Optional[str] = None
        self.counted = False  # frames, skipped, tally and key_verdicts are set

    def batches(self, render=None, colour: bool = False, progress: Optional[Callable[[int], None]] = None,
                batch: int = BATCH) -> Iterator[list]:
        """Lists of Records in frame order; with ``render``, lists of what it makes of
        each Record instead (None for a packet to leave out), with LISTING the
        listing's lines (``colour``: in colour), or with COUNT (--sessions) how many
        packets (ints; each only counted in its session, see ``summaries()``). ``progress(frames read)`` is called
        now and then. Lists hold ``batch`` packets or more (the last fewer); 1 hands
        out each datagram's packets as they come, so that the reader reads no further
        than what was handed out (for a caller that may stop early and say what was
        read, as -c does). Stopping early (leaving the loop) is fine: ``counted`` then
        says whether the counts cover what was read (one reader) or are not known (workers)."""
        jobs = self._jobs(render)
        if jobs > 1:
            from . import parallel

            _Reading.close()  # (each worker reads the file on its own: see _parallel)
            first_time = parallel.first_frame_time(self.path)
            # (None: nothing to share out early on, or damage there: one reader says)
            if first_time is not None and render is not COUNT:
                yield from self._parallel(render, colour, jobs, first_time, progress)
                return
            if first_time is not None and not parallel.likely_too_long_for_sessions(self.path):
                summarised = yield from self._parallel_sessions(jobs, first_time, progress)
                if summarised:
                    return  # (else the workers could not give one reader's sessions: one reader does)
        yield from self._read(render, colour, progress, batch)

    def summaries(self) -> List[dict]:
        """One summary per OpenVPN session (Options.sessions), as --sessions shows them."""
        if self.packed is not None:
            return self.packed
        return self.reader.summaries() if self.reader is not None else []

    # --- one reader --------------------------------------------------------------

    def _new_reader(self, render, colour):
        """A reader whose records come out rendered, as (frame, text) pairs, when there
        is a renderer and nothing else needs the Records (the listing's common packets
        never become Records); else a plain Reader."""
        options = self.run.options
        if not self._renders_itself(render):
            from .reader import Reader

            return Reader(options)
        from .listing import ListingReader, RenderingReader

        if render is LISTING:
            return ListingReader(options, colour)
        return RenderingReader(options, render)

    def _renders_itself(self, render) -> bool:
        return render is not None and not self.run.options.sessions and self.run.writer is None

    def _read(self, render, colour, progress, batch):
        from ..capture.pcapfile import CaptureError
        from ..capture.datagrams import Transport, read_transport

        run = self.run
        reader = self.reader = self._new_reader(render, colour)
        if self._renders_itself(render):
            out = _texts  # (frame, text) pairs: the texts
        elif render is None:
            out = _records
        elif render is COUNT:
            out = len
        else:  # Records the writer or the sessions needed: rendered here
            render_one = _listing_line(colour) if render is LISTING else render
            out = lambda records: [render_one(record) for record in records]  # noqa: E731
        transport, writer = Transport(events=reader.wants_transport_events), run.writer
        held = []  # records (or pairs) not handed out yet
        try:
            source = _source(self.path)
            if run.frames is None:
                datagrams = read_transport(source, transport)
            else:  # (-V shows each packet's frame and headers: keep the frames as they are read)
                from ..capture import keptframes

                datagrams = keptframes.read_transport(source, run.frames, transport)
            for number, datagram in enumerate(datagrams, start=1):
                if number == 1:
                    reader.first_time = transport.first_time  # times count from the first frame, as tshark's
                records = reader.feed(datagram)
                if records:
                    if writer is not None:
                        _write_decrypted(records, writer, run.keep)
                    held += records
                    if len(held) >= batch:
                        yield out(held)
                        held = []
                if progress is not None and number % PROGRESS_EVERY == 0:
                    progress(datagram.frame)
            reader.capture_end = transport.position[1]
            records = reader.finish()
            if writer is not None:
                _write_decrypted(records, writer, run.keep)
        except CaptureError as error:  # (what was readable before the damage was delivered)
            reader.capture_end = transport.position[1]
            records = reader.finish()
            self.error = str(error)
        except OSError as error:
            records = []
            self.error = f"{self.path}: {error.strerror or error}"
        finally:  # (also when the caller stops early: the counts so far)
            _Reading.close()
            self._count(transport.counts.frames, transport.counts.skipped, reader.tally, reader.key_verdicts)
        held += records
        if held:
            yield out(held)
        if self.error is not None:
            run.failed = True

    def _count(self, frames, skipped, tally, key_verdicts):
        self.frames, self.skipped, self.tally, self.key_verdicts = frames, skipped, dict(tally), key_verdicts
        self.counted = True

    # --- parallel workers ----------------------------------------------------------

    def _jobs(self, render) -> int:
        """How many processes share this file: for lines of a big enough file (or as
        ``jobs`` asks), not for what needs every flow in one place or its Records here."""
        run = self.run
        if (run.jobs == 1 or render is None or run.writer is not None or (run.options.sessions and render is not COUNT)
                or run.frames is not None or self.path == "-" or not os.path.isfile(self.path)):
            return 1  # (standard input, a pipe or a device cannot be read by several processes at once)
        from . import parallel

        return run.jobs or parallel.default_jobs(self.path)

    def _parallel(self, render, colour, jobs, first_time, progress):
        """Batches of lines from ``jobs`` workers, in frame order."""
        from . import parallel

        workers = parallel.Workers(self.path, lambda: self._new_reader(render, colour), jobs, first_time)
        lines, next_progress = 0, PROGRESS_EVERY
        if progress is not None:
            _Reading.watch(workers.children, self.path)
        try:
            for batch in workers.lines():
                yield batch
                lines += len(batch)
                if progress is not None and lines >= next_progress:
                    progress(workers.frames_read)
                    next_progress += PROGRESS_EVERY
        finally:  # (also when the caller stops early: then nothing is counted)
            _Reading.close()
            workers.close()
        outcome = workers.outcome
        self._count(outcome.frames, outcome.skipped, outcome.tally, outcome.key_verdicts)
        self.error = outcome.error
        if self.error is not None:
            self.run.failed = True


    def _parallel_sessions(self, jobs, first_time, progress):
        """--sessions from ``jobs`` workers: yields numbers of packets; returns False
        (having yielded nothing) when one reader has to read the file instead."""
        from . import parallel
        from .shardsessions import ShardSessions

        options = self.run.options
        workers = parallel.Workers(self.path, lambda: ShardSessions(options), jobs, first_time, sessions=True)
        counts = []  # (held until the workers are sure they can do it)
        if progress is not None:
            _Reading.watch(workers.children, self.path)
        try:
            for count in workers.sessions():
                counts.append(count)
                if progress is not None:
                    progress(workers.frames_read)
        finally:
            _Reading.close()
            workers.close()
        if workers.summaries is None:
            return False
        outcome, self.packed = workers.outcome, workers.summaries
        self._count(outcome.frames, outcome.skipped, outcome.tally, outcome.key_verdicts)
        self.error = outcome.error
        if self.error is not None:
            self.run.failed = True
        yield sum(counts)
        return True


def _texts(pairs):
    return [text for _frame, text in pairs]


def _records(records):
    return records


def _listing_line(colour):
    from ..render.line import packet_line

    return (lambda record: packet_line(record, True)) if colour else packet_line


def _write_decrypted(records, writer, keep=None):
    """Write each packet with tls-crypt removed (as captured where no key opened it);
    with ``keep`` (-Y), those it keeps, as tshark -Y -w does."""
    for record in records if keep is None else filter(keep, records):
        data = record.data
        wire = record.decrypted
        if wire is not None:  # opened by a key: the plaintext in place of the ciphertext
            from ..wirelayout import plain

            data = plain(wire, record.decoded_with, record.wkc_len or 0)
        writer.write_openvpn(record.time, record.src, record.sport, record.dst, record.dport,
                             record.transport, data)


class _StandardInput:
    """A path of ``-``: standard input as a capture, named as the user wrote it."""

    name = "-"

    def __init__(self):
        from ..capture.pcapfile import CaptureError

        if sys.stdin is None:
            raise CaptureError("-: standard input is closed")
        if sys.stdin.isatty():
            raise CaptureError("-: standard input is a terminal, not a capture "
                               "(pipe one in: tcpdump -w - ... | ovpndiag dissect -)")
        self.read = sys.stdin.buffer.read
        self.peek = getattr(sys.stdin.buffer, "peek", None)  # (to tell a gzip-compressed capture)


def _source(path):
    return _StandardInput() if path == "-" else _Reading.open(path)


class _Reading:
    """The capture file one reader is reading, opened here (when progress is shown on a
    terminal) so that ``share()`` can say how far into it the reader is (of a .gz, in its
    compressed bytes)."""

    file = None
    size = 0
    workers = None  # capture.readshare.ReadShare: how far the workers have read it

    @classmethod
    def open(cls, path):
        """The file at ``path``, or ``path`` itself where there is nothing to measure."""
        import stat

        cls.close()
        if not sys.stderr.isatty():
            return path
        try:
            file = builtins.open(path, "rb")
        except OSError:
            return path  # (the reader says why, as it would have)
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode) or not status.st_size:
            file.close()
            return path
        cls.file, cls.size = file, status.st_size
        return file

    @classmethod
    def watch(cls, pids, path):
        """Workers (``pids``) read ``path``: the share is the slowest one's (Linux)."""
        cls.close()
        if sys.stderr.isatty():
            from ..capture.readshare import ReadShare

            cls.workers = ReadShare(pids, path)

    @classmethod
    def close(cls):
        cls.workers = None
        if cls.file is not None:
            cls.file.close()
            cls.file = None

    @classmethod
    def share(cls) -> str:
        """"(42% of the file) " read so far, or nothing."""
        if cls.workers is not None:
            share = cls.workers.share()
            return "" if share is None else f"({int(100 * share)}% of the file) "
        try:
            return f"({min(100, 100 * cls.file.tell() // cls.size)}% of the file) " if cls.file is not None else ""
        except (OSError, ValueError):
            return ""


share_read = _Reading.share  # for a progress line: how far into its file the reader is


def sniff(interface: str, *, buffer_mib: int = 64, capture_filter: Optional[str] = None, write=None,
          frames=None, **options) -> "LiveDissection":
    """A live dissection of ``interface`` (needs root): ``buffer_mib`` of kernel
    buffer, ``capture_filter`` in pcap-filter syntax (run in the kernel), ``write``: a
    pcap path to save what is captured (never overwritten), ``frames``: as for
    ``open``; the other options are ``open``'s key and port options (summaries are
    always kept). Raises capture.live.CaptureFilterError for a bad filter,
    capture.live.LiveError when the interface cannot be read."""
    from ..capture.live import compile_capture_filter, open_interface

    program = compile_capture_filter(capture_filter) if capture_filter else ()
    reader_settings, _keys_given = reader_options(**options, sessions=True)
    capture = open_interface(interface, buffer_mib, program)
    try:
        writer = None
        if write:
            from ..pcapout import CaptureWriter

            writer = CaptureWriter(write)
    except BaseException:
        capture.close()
        raise
    return LiveDissection(capture, reader_settings, writer, frames)


class LiveDissection:
    """``batches(duration)`` yields each captured frame's Records (a list, maybe empty)
    and None after each block the kernel hands over (a moment to show what came);
    then ``finish()`` gives what was still held; ``summaries()`` the sessions;
    ``close()`` stops the capture and sets ``stats`` (dropped, unread)."""

    def __init__(self, capture, options: Options, writer=None, frames=None):
        from ..capture.datagrams import Transport
        from .reader import Reader

        self.capture, self.writer, self.frames = capture, writer, frames
        self.reader = Reader(options)
        self.transport = Transport(events=self.reader.wants_transport_events)
        self.stats = None
        self._last = (0, 0.0)  # the last frame's number and time, for the transport's flush

    def batches(self, duration: Optional[float] = None) -> Iterator[Optional[list]]:
        import time

        reader, transport, writer, frames = self.reader, self.transport, self.writer, self.frames
        for batch in self.capture.batches(duration):
            if not batch:  # quiet: flows waiting to be recognised are decided in time all the same
                yield reader.tick(time.time())
            for number, stamp, linktype, packet in batch:
                self._last = (number, stamp)
                if frames is not None:
                    frames.keep(number, linktype, packet, len(packet))
                if writer is not None:
                    writer.write_ip(stamp, packet)
                records = []
                for datagram in transport.feed(number, stamp, linktype, packet):
                    records += reader.feed(datagram)
                yield records
            yield None

    def finish(self) -> list:
        """The records of the TCP bytes still held and of every flow still undecided."""
        records = []
        for datagram in self.transport.flush(*self._last):  # TCP bytes still held, and stream ends
            records += self.reader.feed(datagram)
        return records + self.reader.finish()

    def summaries(self) -> List[dict]:
        return self.reader.summaries()

    @property
    def frames_seen(self) -> int:
        return self.transport.counts.frames

    def close(self):
        self.stats = self.capture.stats()
        self.capture.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
