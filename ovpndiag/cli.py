"""The ``ovpndiag`` command line: thin click commands over the library - options
in (``cli_options``), one library call, a renderer out. What goes wrong ends in
one line on stderr and the right exit status (``cli_support``).

Commands import what they need inside their own bodies, so ``--help`` and
``--version`` stay instant and ``check`` loads nothing it does not use.
"""

import json
import sys

import click

from . import __version__
from .cli_options import (CHECK_EPILOG, HANDSHAKE_EPILOG, PROBE_EPILOG, analyze_options, colour_option,
                          dissect_options,
                          fields_output, handshake_options, handshake_settings, pipeline_options, probe_options,
                          probe_settings, try_key_file)
from .cli_support import (OutputError, PluginCommand, StopOnSignals, UserError, colour_choice, emit, plugin,
                          plugin_print, run as run_command, unbuffered_stdout, user_errors)


def run():
    """The console entry point (see cli_support.run)."""
    run_command(main)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ovpndiag")
@click.pass_context
def main(context):
    """Packet-level OpenVPN diagnostics: probe servers the way a client would,
    check them from monitoring, read OpenVPN captures."""
    if sys.stdout is None and context.invoked_subcommand != "check":  # (check says UNKNOWN itself)
        raise OutputError("standard output is closed")  # (started with >&-): said before any work


@main.command(epilog=PROBE_EPILOG)
@probe_options
@click.option("--try-keys", is_flag=True,
              help="With a key file: try every key direction, digest and wrapping, report what the server answers.")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Save the exchange as a capture (never overwrites).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@colour_option
def probe(as_json, try_keys, write_path, color, **options):
    """Send an OpenVPN client reset to HOST and explain what happens."""
    try:
        settings = probe_settings(options)
        if try_keys:
            result = try_key_file(settings, options)
        else:
            from .pcapout import CaptureWriter, recorded
            from .probe import probe as run_probe

            writer = CaptureWriter(write_path) if write_path else None  # refuse before sending anything
            result = recorded(writer, lambda: run_probe(settings), lambda result: result.exchange,
                              lambda result: not result.ok)  # (a probe that sent nothing: no file)
    except user_errors() as error:
        raise UserError(str(error)) from None
    if as_json:
        emit(json.dumps(result.to_dict()))
    else:
        from .render.report import probe_report, try_keys_report

        emit(try_keys_report(result) if try_keys else probe_report(result, settings), colour_choice(color))
    sys.exit(0 if result.ok else 1)


@main.command(epilog=HANDSHAKE_EPILOG)
@probe_options
@handshake_options("data")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Save every packet as a capture (never overwrites).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@colour_option
def handshake(as_json, color, **options):
    """Walk the whole OpenVPN handshake with HOST as a client would, stage by
    stage (reset, tls, auth, push, data), and say where it stops and why."""
    from .handshake_check import judge, to_dict

    try:
        settings = handshake_settings(options)
        from .client import Client
        from .pcapout import CaptureWriter

        client = Client(settings)  # reads the credentials: their errors come before anything is sent
        writer = CaptureWriter(settings.write) if settings.write else None
    except user_errors() as error:
        raise UserError(str(error)) from None
    from .pcapout import recorded

    result = recorded(writer, lambda: client.run(settings.stage), lambda _result: client.exchange,
                      lambda _result: not client.exchange)  # (nothing sent - no address, TCP refused: no file)
    judgement = judge(result, options["cert_warning"], options["cert_critical"])
    if as_json:
        emit(json.dumps(to_dict(result, judgement)))
    else:
        from .render.handshake import handshake_report

        emit(handshake_report(result, judgement, settings.stage), colour_choice(color))
    sys.exit(0 if judgement.state == 0 else 1)


@main.command(cls=PluginCommand, epilog=CHECK_EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="ovpndiag check", message="%(prog)s %(version)s")
@probe_options
@handshake_options("reset")
@click.option("-w", "--warning", metavar="RANGE", help="Warning threshold on the response time, seconds.")
@click.option("-c", "--critical", metavar="RANGE", help="Critical threshold on the response time, seconds.")
@click.option("--warn-on-retry", is_flag=True, help="WARNING when only a retried reset was answered.")
@click.option("-v", "--verbose", is_flag=True, help="Add the probe's detail lines after the status line.")
@plugin
def check(warning, critical, warn_on_retry, verbose, **options):
    """Nagios/Icinga plugin: probe HOST and report OK/WARNING/CRITICAL/UNKNOWN with perfdata.
    With --stage beyond reset, walk the handshake that far (see 'ovpndiag handshake')."""
    from .monitoring import Range
    from .render.nagios import plugin_output

    warning_range = Range.parse(warning) if warning else None
    critical_range = Range.parse(critical) if critical else None
    if options["stage"] != "reset":  # the client (TLS, cryptography) only when asked for
        from .client import Client
        from .handshake_check import evaluate

        settings = handshake_settings(options)
        outcome = evaluate(Client(settings).run(settings.stage), settings.stage, warning_range, critical_range,
                           settings.probe.timeout, options["cert_warning"], options["cert_critical"], warn_on_retry)
    else:
        from .check import evaluate
        from .probe import probe as run_probe

        settings = probe_settings(options)
        outcome = evaluate(run_probe(settings), warning_range, critical_range, settings.timeout,
                           1 + settings.retries if settings.proto == "udp" else 1, warn_on_retry)
    plugin_print(plugin_output(outcome, verbose))
    sys.exit(outcome.state)


@main.command()
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("-r", "--read-file", "read_files", metavar="FILE", multiple=True,
              help="A capture to read, as tshark -r (the same as a FILE argument). Repeatable.")
@dissect_options
@click.option("--write-decrypted", "write_decrypted", metavar="OUT.pcap",
              help="Write the OpenVPN packets with tls-crypt removed, for Wireshark (never overwrites).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64),
              help="Processes sharing a capture's flows for the listing and --json (default: one per "
                   "CPU, up to 4, for files of 16 MB or more; 1: one process). The output is the same.")
def dissect(files, read_files, write_decrypted, jobs, **options):
    """Print the OpenVPN traffic in pcap/pcapng captures, Wireshark-style.
    A FILE of - reads a capture from standard input (tcpdump -w - | ovpndiag dissect -);
    gzip-compressed captures are read as they are.

    \b
    Exit status: 0 read, 1 a capture could not be read to its end (what was
    readable is printed first), 2 bad options or key files."""
    from .dissect import pipeline
    from .render.output import Output

    files = read_files + files
    if not files:
        raise UserError("no capture to read: give FILE... or -r FILE (- for standard input)")
    options["fields_output"] = fields_output(options)
    output = Output(options, len(files) > 1, colour_choice(options["color"]))
    try:
        run = pipeline.open(files, **pipeline_options(options), sessions=options["sessions"],
                            jobs=1 if options["hex_dump"] else jobs, write_decrypted=write_decrypted,
                            frames=output.frames, tune_gc=True, display_filter=options["display_filter"])
    except user_errors() as error:
        raise UserError(str(error)) from None
    output.watch_keys(run, options["config"], options["auth"])
    done = False
    try:
        status = output.show(run)
        done = True
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        run.close(failed=not done)  # (a failed run that wrote no decrypted packet leaves no file)
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    sys.exit(status)


@main.command()
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("-r", "--read-file", "read_files", metavar="FILE", multiple=True,
              help="A capture to read, as tshark -r (the same as a FILE argument). Repeatable.")
@analyze_options
def analyze(files, read_files, **options):
    """Say why each OpenVPN handshake in pcap/pcapng captures failed (or that it
    worked), session by session: a timeline, the stage reached, a verdict with its
    evidence and what to try; then a table of verdicts. The keys given are the
    server's: with them, unanswered clients are told apart (wrong key, key
    direction or digest, no tls-auth).

    \b
    Exit status: 0 read, 1 a capture could not be read to its end (what was
    readable is analysed first), 2 bad options, key files or key log."""
    from .analyze.keylog import KeyLogError
    from .analyze.run import analyses, open as open_analysis
    from .render.analysis import VerdictTable, session_json, session_text

    files = read_files + files
    if not files:
        raise UserError("no capture to read: give FILE... or -r FILE (- for standard input)")
    try:
        run = open_analysis(files, ports=options["ports"], wrapping=options["wrapping"], auth=options["auth"],
                            tls_auth=options["tls_auth"], tls_crypt=options["tls_crypt"],
                            tls_crypt_v2=options["tls_crypt_v2"], key_direction=options["key_direction"],
                            config=options["config"], keylog=options["keylog"], jobs=options["jobs"], tune_gc=True)
    except (*user_errors(), KeyLogError) as error:
        raise UserError(str(error)) from None
    table, number = VerdictTable(), 0
    try:
        for capture in run:
            for analysis in analyses(capture):
                number += 1
                table.add(analysis)
                sys.stdout.write((session_json(analysis, capture.path if len(files) > 1 else None)
                                  if options["as_json"] else session_text(number, analysis) + "\n") + "\n")
            if capture.error is not None:
                sys.stdout.flush()
                click.echo(f"ovpndiag: error: {capture.error}", err=True)
        if not options["as_json"] and (number or not run.failed):  # (not for files that could not be read)
            sys.stdout.write(table.text() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as error:
        raise OutputError(error.strerror or str(error)) from None
    sys.exit(1 if run.failed else 0)


@main.command()
@click.option("-i", "--interface", required=True, help="Interface to listen on (needs root).")
@dissect_options
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--write", "write_path", metavar="FILE.pcap", help="Also save what was captured (never overwrites).")
@click.option("--buffer", "buffer_mib", type=click.IntRange(1, 4096), default=64, show_default=True, metavar="MIB",
              help="Kernel capture buffer, MiB: it holds the packets not yet read in a burst.")
@click.option("-f", "capture_filter", metavar="BPF",
              help="Capture filter (pcap-filter syntax, as tcpdump's): run in the kernel, so what it "
                   "rejects is never copied nor counted.")
def sniff(interface, duration, write_path, buffer_mib, capture_filter, **options):
    """Dissect OpenVPN traffic live on an interface; Ctrl-C (or SIGTERM) stops
    with a summary, after showing what was already captured.

    \b
    Exit status: 0 stopped (Ctrl-C, SIGTERM, -c or --duration), 1 the interface
    could not be read, 2 bad options or key files."""
    import math

    from .capture.live import CaptureFilterError, LiveError
    from .dissect import pipeline
    from .render.output import Output

    try:
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise UserError(f"--duration must be a number of seconds above 0, not {duration}")
        options["fields_output"] = fields_output(options)
        output = Output(options, False, colour_choice(options["color"]))
        live = pipeline.sniff(interface, buffer_mib=buffer_mib, capture_filter=capture_filter, write=write_path,
                              frames=output.frames, **pipeline_options(options))
    except CaptureFilterError as error:
        raise UserError(f"-f: {error}") from None
    except LiveError as error:
        click.echo(f"ovpndiag: error: {error}", err=True)
        sys.exit(1)
    except user_errors() as error:
        raise UserError(str(error)) from None
    click.echo(f"ovpndiag: listening on {interface} (UDP and TCP, {buffer_mib} MiB buffer); Ctrl-C stops", err=True)
    output.write = unbuffered_stdout()
    signals = StopOnSignals(live.capture)
    try:
        output.show_live(live, duration)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        live.close()
    click.echo(output.live_summary(live, signals.received), err=True)
    signals.restore()
