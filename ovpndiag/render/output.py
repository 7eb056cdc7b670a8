"""What ``dissect`` and ``sniff`` print: a run of ``dissect.pipeline`` rendered in
the mode the options ask for (the listing, -V/-x trees, JSON Lines, -T fields,
--sessions), with -Y, -c, the per-file header, tally and key notes, and the
progress line on a terminal. ``Output.show(run)`` is the whole of ``dissect``.
"""

import sys

import click

PROGRESS_EVERY = 50000  # (dissect.pipeline's): datagrams between progress lines on a terminal


class Output:
    """Renders records in the mode asked for; counts them for -c, and what the
    user's keys opened (see ``watch_keys``). ``options``: the command's options;
    ``colour``: --color resolved (None: a terminal decides)."""

    def __init__(self, options, many_files, colour=None):
        from . import jsonl, line, sessions as session_render

        self.count, self.limit = 0, options["count"]
        self.sessions = options["sessions"]
        self.as_json = options["as_json"]
        self.file = None
        self.many = many_files
        self.fields = options.get("fields_output")  # -T fields: its -E options
        colour = self.colour = (sys.stdout.isatty() if colour is None else colour) and not self.as_json \
            and self.fields is None
        self.listing = not self.as_json and not options["verbose"] and not options["hex_dump"] and self.fields is None
        self.frames = None  # -V: the frames kept to show their headers (capture.keptframes)
        self.filter = options["display_filter"]  # -Y: a predicate on records
        self.render = None
        self.pending = []
        if self.as_json:
            self.render = (lambda record: jsonl.packet_json(record, self.file)) if many_files else jsonl.packet_json
        elif self.fields is not None:
            from .fields import fields_renderer, header_line

            render_fields = fields_renderer(list(options["fields"]), self.fields)
            self.render = lambda record: render_fields(record, self.file)
            if self.fields.header:
                self.pending.append(header_line(list(options["fields"]), self.fields))
        elif options["verbose"] or options["hex_dump"]:
            from .tree import TreeRenderer

            if options["verbose"]:
                from ..capture.keptframes import KeptFrames

                self.frames = KeptFrames()
            self.render = TreeRenderer(self.frames, tree=options["verbose"], hexdump=options["hex_dump"],
                                       line=lambda record: line.packet_line(record, colour))
        elif colour:
            self.render = lambda record: line.packet_line(record, True)
        else:
            self.render = line.packet_line
        self.jsonl, self.session_render = jsonl, session_render
        self.write = sys.stdout.write
        self.matched = None
        if self.sessions and self.filter is not None:
            from ..dissect.sessionfilter import MatchedSessions

            self.matched = MatchedSessions()
        self.key_names = {}  # wrapping -> how its key was given, e.g. "--tls-crypt key"
        self.tls_auth_doubt = ""
        self.file_start = 0  # self.count when the current file began

    def watch_keys(self, run, config=None, auth=None):
        """Name the keys the user gave (``run``: a dissect.pipeline.Dissection), so that
        ``key_notes`` can say when one opened or verified none of the packets it applies
        to (a key that does not belong to the traffic, which otherwise only shows as BAD
        on every line)."""
        keys = run.keys
        given = (("tls-auth", keys.tls_auth), ("tls-crypt", keys.tls_crypt),
                 ("tls-crypt-v2", keys.v2_server or keys.v2_client))
        self.key_names = {kind: f"--{kind} key" if run.keys_given[kind] else f"{kind} key of {config}"
                          for kind, key in given if key is not None}
        # What the user pinned for tls-auth may be the culprit, not the key.
        pinned = ([f"key-direction {keys.client_key_direction}"] if keys.client_key_direction else []) + \
                 ([f"--auth {auth}"] if auth else [])
        self.tls_auth_doubt = (f", or {' and '.join(pinned)} {'is' if len(pinned) == 1 else 'are'} wrong for it"
                               if pinned else "")

    def key_notes(self, path, verdicts):
        """Once per file, on stderr: each key that opened none of the packets it applies to
        (``verdicts``: the reader's key_verdicts)."""
        for kind, (opened, applied) in verdicts.items():
            if kind in self.key_names and applied and not opened:
                where = f"{path}: " if self.many else ""
                verb = "verified" if kind == "tls-auth" else "opened"
                packets = f"{applied:,} packet{'s' if applied != 1 else ''}"
                doubt = self.tls_auth_doubt if kind == "tls-auth" else ""
                click.echo(f"ovpndiag: note: {where}the {self.key_names[kind]} {verb} none of {packets}: "
                           f"it does not belong to this traffic{doubt}", err=True)

    def wanted(self):
        """What to ask the pipeline's batches() for: None (Records: --sessions, and -Y
        over them), the listing (its fast path), or a renderer (None for a packet -Y
        leaves out)."""
        from ..dissect.pipeline import COUNT, LISTING

        if self.sessions:  # (the packets only counted, in workers too; -Y and -c need the Records)
            return COUNT if self.filter is None and self.limit is None else None
        if self.filter is None:
            return LISTING if self.listing else self.render
        keep, render = self.filter, self.render  # -Y: every packet becomes a record to test (no fast path)
        return lambda record: render(record) if keep(record) else None

    @property
    def full(self):
        return self.limit is not None and self.count >= self.limit

    def records(self, records):
        """Records (--sessions, or sniff's): counted, or rendered."""
        if self.filter is not None:
            records = [record for record in records if self.filter(record)]
        if self.sessions:
            if self.matched is not None:  # -Y: the sessions shown are those with a packet that matched
                for record in records:
                    self.matched.add(record)
            self.count += len(records)
            return
        self.lines(list(map(self.render, records)))

    def counted(self, packets: int):
        """--sessions: packets counted in their sessions (dissect.pipeline.COUNT)."""
        self.count += packets

    def lines(self, lines):
        """Lines already rendered (None: a packet -Y left out)."""
        if self.filter is not None:
            lines = [line for line in lines if line is not None]
        if self.limit is not None:
            lines = lines[:max(0, self.limit - self.count)]
        self.count += len(lines)
        self.pending.extend(lines)
        if len(self.pending) >= 4096:
            self.flush()

    def flush(self):
        """Lines go out in batches: one write per line costs more than the rest of the line."""
        if self.pending:
            self.write("\n".join(self.pending) + "\n")
            self.pending.clear()

    def summaries(self, summaries):
        self.flush()
        if not self.sessions:
            return
        if self.matched is not None:
            summaries = [summary for summary in summaries if self.matched.keeps(summary)]
        for number, summary in enumerate(summaries, start=1):
            if self.as_json:
                if self.many:
                    summary["file"] = self.file
                self.write(self.jsonl.session_json(summary) + "\n")
            else:
                self.write(self.session_render.session_text(number, summary) + "\n\n")

    def show(self, run) -> int:
        """Dissect and print every file of ``run`` (a dissect.pipeline.Dissection): the
        exit status, 1 if a file could not be read to its end, else 0."""
        from ..dissect.pipeline import BATCH, COUNT

        wanted = self.wanted()
        add = self.records if wanted is None else self.counted if wanted is COUNT else self.lines
        for capture in run:
            self.file, self.file_start = capture.path, self.count
            if self.many and not self.as_json and not self.sessions and self.fields is None:
                self.write(f"==> {capture.path} <==\n")
            for batch in capture.batches(wanted, self.colour, self.progress, 1 if self.limit else BATCH):
                add(batch)
                if self.full:
                    break
            self.flush()
            if capture.error is not None:
                click.echo(f"ovpndiag: error: {capture.error}", err=True)
            if capture.counted:  # (not when workers were stopped early: -c)
                self.summaries(capture.summaries())
                self.key_notes(capture.path, capture.key_verdicts)
                self.tally(capture.path, capture.frames, capture.tally, capture.skipped)
            if self.full:
                break
        return 1 if run.failed else 0

    def progress(self, frames):
        if sys.stderr.isatty():
            from ..dissect.pipeline import share_read

            sys.stderr.write(f"\r{frames:,} frames, {self.count:,} OpenVPN packets {share_read()}")
            sys.stderr.flush()

    def tally(self, path, frames, tally, skipped):
        """What a file held, every payload counted: in the --sessions report, and on a
        terminal; static-key traffic (never shown) is always said on stderr."""
        undecided, static = tally.get("undecided", 0), tally.get("static", 0)
        text = (f"{path}: {frames:,} frames, {self.count - self.file_start:,} OpenVPN packets"
                + (f" ({undecided:,} in flows too short to be sure of)" if undecided else "")
                + f"; skipped: {tally.get('other', 0):,} payloads of other protocols, "
                + (f"{static:,} static-key OpenVPN payloads, " if static else "")
                + f"{skipped:,} frames without UDP or TCP")
        if static:
            click.echo(f"ovpndiag: note: {path}: {static:,} payloads on an OpenVPN port are static-key (--secret) "
                       "traffic: it has no control channel, so there is nothing to dissect", err=True)
        if self.sessions and not self.as_json:
            self.write(text + "\n")
        elif sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + text + "\n")  # over the progress line

    def show_live(self, live, duration=None):
        """Print a live dissection (a dissect.pipeline.LiveDissection) until it stops
        (a signal, ``duration`` seconds, or -c): each block of packets as it comes."""
        for records in live.batches(duration):
            if records is None:  # the end of a block the kernel handed over: show it
                self.flush()
                sys.stdout.flush()
                if self.full:
                    break
                continue
            self.records(records)
            if self.full:
                self.flush()
                sys.stdout.flush()
                break
        self.records(live.finish())
        self.summaries(live.summaries())
        sys.stdout.flush()

    def live_summary(self, live, signals_received=0) -> str:
        """sniff's closing line (after ``live.close()``)."""
        sessions, stats, skipped = live.summaries(), live.stats, live.reader.not_openvpn
        text = (f"{'interrupted: ' if signals_received else ''}{live.frames_seen} frames, {self.count} OpenVPN "
                f"packets in {len(sessions)} session{'s' if len(sessions) != 1 else ''}"
                + (f", {skipped} other payloads skipped" if skipped else "")
                + f"; {stats.dropped} packets dropped by kernel")
        if stats.dropped:
            text += " (the capture buffer was full: a larger --buffer holds longer bursts)"
        if stats.unread and not self.full:  # (-c stops reading on purpose)
            how = "stopped at once by a second signal" if signals_received > 1 else "stopped before reading them"
            text += f"; {stats.unread} captured packets not read ({how})"
        return text
