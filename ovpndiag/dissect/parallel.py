"""One capture dissected by several processes, each taking a shard of the flows.

The listing and the JSON cost Python work per packet, and a capture's flows are
independent of each other. So ``jobs`` forked workers each read the whole file
but dissect and render only the flows ``transport.shard_of`` gives them (the
transport layer drops the others before TCP reassembly), and send their lines
here tagged with frame numbers. The parent merges them back into frame order -
the order a single reader prints them in - using each worker's watermark: the
frame up to which it will send nothing more.

The output is the same as one reader's: a reader decides each flow from that
flow's own packets and the capture's clock (see ``reader``), never from the
others. Two exceptions remain in pathological captures: packets released by a TCP
stream's idle timeout may be numbered with a later frame (each worker's
reassembler only sees its own segments go by), and a flow still undecided when
reader.MAX_QUEUE packets wait behind it is guessed when its own worker's queue is
full, not the single reader's.

--sessions (``Workers(..., sessions=True)``, ``_summarise``): each worker counts its
flows' packets into sessions and sends, at the end, their summaries packed with the
frame each flow began at; the parent lists them by flow start, as one reader does.
Where that order or a session's packets would depend on flows of other shards (a
capture longer than reader.FLOW_IDLE, a client that floated to another shard), the
workers give up and one reader reads the file.
"""

import bisect
import os
import signal
import sys
import traceback
from itertools import chain
from multiprocessing import Pipe
from multiprocessing.connection import wait
from operator import itemgetter
from typing import Iterator, List, NamedTuple, Optional

from ..capture.pcapfile import CaptureError
from ..capture.datagrams import Progress, Transport, read_transport
from .sessions import PackedSummaries

BATCH = 2048  # lines per message from a worker
SESSIONS_PROGRESS = 65536  # frames between a --sessions worker's counts of packets
SPAN_SAMPLE = 20000  # frames read to guess a capture's span (likely_too_long_for_sessions)
FIRST_DATAGRAM_WITHIN = 100000  # frames searched for the capture's first datagram
MIN_SIZE = 16 << 20  # smaller files are read faster by one process than by forking workers
MAX_JOBS = 4  # each worker reads the whole file: beyond a few, that reading is most of the work
NEVER = float("inf")


class WorkersReport(NamedTuple):
    """What the workers found besides the lines, for the summary line."""
    frames: int
    skipped: int  # frames without UDP or TCP
    tally: dict  # payloads by what they were (reader.Reader.tally)
    key_verdicts: dict  # what the user's keys opened (reader.Reader.key_verdicts)
    error: Optional[str]  # the capture's damage, after everything readable was sent


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(path) -> int:
    """Workers for a file when -j is not given: one per usable CPU up to MAX_JOBS,
    and none (1) for files too small to be worth forking for."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 1
    return min(usable_cpus(), MAX_JOBS) if size >= MIN_SIZE else 1


def first_frame_time(path) -> Optional[float]:
    """The time of the capture's first frame, which the listing's relative times count
    from (as tshark's); None when no transport payload comes early on or the file is
    damaged there (then one reader does the job, and says what is wrong)."""
    transport = Transport(shard=(0, 1))  # one shard: every datagram, and Progress
    items = read_transport(path, transport)
    try:
        for item in items:
            if item.__class__ is not Progress:
                return transport.first_time
            if item.frame > FIRST_DATAGRAM_WITHIN:
                return None
    except (CaptureError, OSError):
        return None
    finally:
        items.close()
    return None


def likely_too_long_for_sessions(path) -> bool:
    """Whether the capture likely spans so long (1.5 x reader.FLOW_IDLE) that --sessions
    workers would give up (see ``_summarise``): its span projected from the time its first
    SPAN_SAMPLE frames cover and the bytes they take. Only a guess to save the workers'
    wasted start on long captures: the workers check the span itself."""
    import builtins

    from .reader import FLOW_IDLE

    transport, first, last = Transport(shard=(0, 1)), None, None
    try:
        with builtins.open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            items = read_transport(file, transport)
            try:
                for item in items:
                    if item.__class__ is Progress:
                        if item.frame > SPAN_SAMPLE:
                            break
                    else:
                        first = item.time if first is None else first
                        last = item.time
                else:
                    return False  # (read whole: the workers see the span)
                taken = file.tell()
            finally:
                items.close()
    except (CaptureError, OSError):
        return False
    if first is None or not taken:
        return False
    return (last - first) * size / taken > 1.5 * FLOW_IDLE


class Workers:
    """``lines()`` yields batches of rendered lines in frame order; ``outcome`` is set
    once they are all read. ``close()`` stops the workers (also when the reader of
    the lines stops early, e.g. ``-c``)."""

    def __init__(self, path, make_reader, jobs: int, first_time: float, sessions: bool = False):
        sys.stdout.flush()  # a forked child must not inherit (and write again) pending output
        sys.stderr.flush()
        self.children, self.connections = [], []
        self.outcome: Optional[WorkersReport] = None
        self.frames_read = 0  # frames every worker is past, for a progress line
        self.summaries = None  # --sessions: sessions.PackedSummaries, once read
        work = _summarise if sessions else _work
        try:
            for index in range(jobs):
                receiving, sending = Pipe(duplex=False)
                pid = os.fork()
                if pid == 0:  # the worker
                    receiving.close()
                    for other in self.connections:
                        other.close()
                    _live(work, sending, path, make_reader, (index, jobs), first_time)
                sending.close()
                self.children.append(pid)
                self.connections.append(receiving)
        except OSError:  # no more processes or pipes: stop those started
            self.close()
            raise

    def _rounds(self) -> Iterator[list]:
        """The workers' messages as they come: per wait, [(worker index, message)]. A
        worker's "end" message is its last; one that dies or crashes raises."""
        index_of = {connection: index for index, connection in enumerate(self.connections)}
        open_connections = list(self.connections)
        while open_connections:
            arrived = []
            for connection in wait(open_connections):
                index = index_of[connection]
                try:
                    message = connection.recv()
                except EOFError:
                    raise RuntimeError(f"dissection worker {index + 1} ended without a word") from None
                if message[0] == "crash":
                    raise RuntimeError(f"dissection worker {index + 1} failed: {message[1]}")
                if message[0] == "end":
                    open_connections.remove(connection)
                arrived.append((index, message))
            yield arrived

    def lines(self) -> Iterator[List[str]]:
        jobs = len(self.connections)
        frames: List[list] = [[] for _ in range(jobs)]
        texts: List[list] = [[] for _ in range(jobs)]
        marks = [0] * jobs
        ends = [None] * jobs
        for arrived in self._rounds():
            for index, message in arrived:
                frames[index] += message[1]
                texts[index] += message[2]
                if message[0] == "end":
                    marks[index], ends[index] = NEVER, message[3:]
                else:
                    marks[index] = message[3]
            limit = min(marks)
            if limit != NEVER:
                self.frames_read = limit
            batch = _merge(frames, texts, limit)
            if batch:
                yield batch
        self.outcome = _report(ends)

    def sessions(self) -> Iterator[int]:
        """--sessions (workers made with ``sessions=True``): yields how many OpenVPN packets
        were read, now and then; then sets ``outcome`` and ``summaries`` (every session, in
        the order one reader gives them), or leaves ``summaries`` None when the shards
        could not give one reader's sessions (see ``_summarise``): then read the file again
        with one reader."""
        ends = [None] * len(self.connections)
        marks = [0] * len(self.connections)
        for arrived in self._rounds():
            for index, message in arrived:
                if message[0] == "one reader":
                    return
                if message[1]:
                    yield message[1]
                if message[0] == "end":
                    ends[index] = message
                else:
                    marks[index] = message[2]
                    self.frames_read = min(marks)
        probed = [set(end[8]) for end in ends]
        registered = [set(end[9]) for end in ends]
        for index, probes in enumerate(probed):  # a client that floated to a flow of another shard
            if any(probes & keys for other, keys in enumerate(registered) if other != index):
                return
        flows = sorted((frame, index, number, count, packed) for index, end in enumerate(ends)
                       for number, (frame, count, packed) in enumerate(end[7]))
        self.summaries = PackedSummaries([(count, packed) for _f, _i, _n, count, packed in flows])
        self.outcome = _report([end[2:7] for end in ends])

    def close(self):
        for connection in self.connections:
            connection.close()
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        self.children = []


def _report(ends) -> WorkersReport:
    """The file's report from each worker's (frames, skipped, tally, error, key verdicts):
    every worker reads every frame; tallies and key verdicts add up."""
    tally, verdicts = {}, {}
    for _frames, _skipped, worker_tally, _error, worker_verdicts in ends:
        for name, count in worker_tally.items():
            tally[name] = tally.get(name, 0) + count
        for kind, (opened, applied) in worker_verdicts.items():
            total = verdicts.setdefault(kind, [0, 0])
            total[0], total[1] = total[0] + opened, total[1] + applied
    return WorkersReport(frames=ends[0][0], skipped=ends[0][1], tally=tally, key_verdicts=verdicts,
                         error=next((end[3] for end in ends if end[3]), None))


def _merge(frames, texts, limit):
    """Take from each worker the lines numbered up to ``limit``, in frame order
    (a tie, which only the end of a capture makes, goes to the lower worker)."""
    taken = []
    for worker_frames, worker_texts in zip(frames, texts):
        count = bisect.bisect_right(worker_frames, limit)
        if count:
            taken.append((worker_frames[:count], worker_texts[:count]))
            del worker_frames[:count], worker_texts[:count]
    if len(taken) <= 1:
        return taken[0][1] if taken else []
    pairs = sorted(chain.from_iterable(zip(*shard) for shard in taken), key=itemgetter(0))
    return [text for _frame, text in pairs]


def _live(work, connection, *args):
    """A forked worker's whole life: ``work(connection, *args)``, then exit without
    returning into the parent's code. Ctrl-C is the parent's to handle; a parent that
    stops reading (e.g. -c) ends it quietly; anything else is sent as a "crash"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    status = 0
    try:
        work(connection, *args)
    except (BrokenPipeError, ConnectionResetError):
        status = 1
    except BaseException:
        status = 1
        try:
            connection.send(("crash", traceback.format_exc().strip().splitlines()[-1]))
        except OSError:
            pass
    finally:
        os._exit(status)


def _work(connection, path, make_reader, shard, first_time):
    """A worker's work (run by ``_live``): dissect one shard with the reader
    ``make_reader()`` gives (one whose records are (frame, text) pairs, see
    ``listing``), send lines, then "end" with the totals."""
    reader = make_reader()
    transport = Transport(shard=shard, events=reader.wants_transport_events)
    reader.first_time = first_time
    frames, texts = [], []
    error = None
    try:
        for item in read_transport(path, transport):
            if item.__class__ is Progress:
                mark = item.frame - 1
            else:
                for frame, text in reader.feed(item):
                    frames.append(frame)
                    texts.append(text)
                if len(texts) < BATCH:
                    continue
                mark = item.frame - 1  # this frame may still complete more packets
            if reader.queue:  # packets of undecided flows wait, numbered from the first
                mark = min(mark, reader.queue[0][1] - 1)
            connection.send(("lines", frames, texts, mark))
            frames, texts = [], []
    except CaptureError as damage:
        error = str(damage)
    except OSError as failure:
        error = f"{path}: {failure.strerror or failure}"
    for frame, text in reader.finish():
        frames.append(frame)
        texts.append(text)
    counts = transport.counts
    connection.send(("end", frames, texts, counts.frames, counts.skipped, dict(reader.tally), error, reader.key_verdicts))


def _summarise(connection, path, make_reader, shard, first_time):
    """A --sessions worker's work (run by ``_live``): dissect one shard with ``make_reader()``'s reader (a
    ShardSessions), send how many packets now and then, and at the end its flows'
    sessions, packed, each flow with the frame it began at (one reader lists sessions
    by flow, in the order the flows began).

    Two things only one reader sees, so a worker says "one reader" instead: a capture
    spanning more than reader.FLOW_IDLE seconds (one reader forgets idle flows and lists
    their sessions first, at moments that depend on every flow's datagrams), and - said
    at the end, through the keys it sends - a flow whose first packet names a client
    session id or peer-id that a flow of another shard has (a client that floated:
    one reader shows one session)."""
    from .reader import FLOW_IDLE

    reader = make_reader()
    transport = Transport(shard=shard, events=reader.wants_transport_events)
    reader.first_time = first_time
    feed = reader.feed
    packets, next_progress, error = 0, SESSIONS_PROGRESS, None
    earliest = latest = first_time
    try:
        for item in read_transport(path, transport):
            if item.__class__ is Progress:
                if item.frame >= next_progress:
                    connection.send(("packets", packets, item.frame - 1))
                    packets, next_progress = 0, item.frame + SESSIONS_PROGRESS
                continue
            time = item.time
            if time > latest or time < earliest:
                earliest, latest = min(earliest, time), max(latest, time)
                if latest - earliest > FLOW_IDLE:
                    connection.send(("one reader",))
                    return
            packets += len(feed(item))
    except CaptureError as damage:
        error = str(damage)
    except OSError as failure:
        error = f"{path}: {failure.strerror or failure}"
    reader.capture_end = transport.position[1]
    packets += len(reader.finish())
    counts = transport.counts
    connection.send(("end", packets, counts.frames, counts.skipped, dict(reader.tally), error,
                     reader.key_verdicts, reader.packed_flows(), reader.probes, reader.registered()))


