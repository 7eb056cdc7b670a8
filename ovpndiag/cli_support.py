"""What every ovpndiag command shares around its work: one line on stderr and the
right exit status for whatever goes wrong (never a traceback), output that may not
be writable, monitoring plugins' UNKNOWN, --color, and a live capture's signals.
"""

import functools
import sys
from typing import Optional

import click

EX_SOFTWARE, EX_IOERR = 70, 74  # sysexits.h: an internal error; an input/output error

class OutputError(Exception):
    """The result could not be written where the user sent it (a full disk, a
    closed standard output): theirs to know, not a bug to report."""


def run(main):
    """A console entry point running the click command ``main``: one line on stderr, never
    a traceback - an output or system error says what failed (exit 74), a bug asks to be
    reported (exit 70)."""
    try:
        try:
            main()
        finally:
            flush_stdout()  # what is still buffered (the listing's last lines) must get out too
    except OutputError as error:
        give_up("ovpndiag", f"cannot write the output: {error}", EX_IOERR)
    except OSError as error:  # the system failed us: a listing's write to a full disk, a file being written
        import errno

        where = f": {error.filename}" if error.filename else ""
        writing = error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EPIPE)
        give_up("ovpndiag", f"{'cannot write: ' if writing else ''}{error.strerror or error}{where}", EX_IOERR)
    except Exception as error:  # click handles usage errors and exits itself
        give_up("ovpndiag", f"internal error: {type(error).__name__}: {error} (please report it)", EX_SOFTWARE)


def emit(text, colour=None):
    """click.echo to standard output (``colour``: True keeps click's styles, False strips
    them, None: on a terminal only), or OutputError saying why it could not be written."""
    if sys.stdout is None:  # started with it closed (>&-): Python has no stdout object at all
        raise OutputError("standard output is closed")
    try:
        click.echo(text, color=colour)
    except OSError as error:
        raise OutputError(error.strerror or str(error)) from None


def flush_stdout():
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except OSError as error:
        raise OutputError(error.strerror or str(error)) from None


def give_up(prog, message, status):
    """One line on stderr and exit; what stdout still buffers goes nowhere, so that
    Python does not fail on it again (with a traceback) as it exits."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass
    try:
        click.echo(f"{prog}: error: {message}", err=True)
    except (OSError, ValueError):  # stderr is gone too: the status is all that is left
        pass
    sys.exit(status)


def colour_choice(choice) -> Optional[bool]:
    """--color as click.echo's ``color``: True, False, or None (auto: a terminal decides).
    NO_COLOR (no-color.org), set and not empty, turns auto off; --color always wins."""
    import os

    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return None


class UserError(click.ClickException):
    """Bad options or key files: exit status 2, like click's own usage errors."""

    exit_code = 2


def user_errors():
    from .client import CredentialsError
    from .keys import KeyFileError
    from .monitoring import RangeError
    from .pcapout import WriteError
    from .settings import SettingsError

    return KeyFileError, SettingsError, RangeError, WriteError, CredentialsError


class PluginCommand(click.Command):
    """A monitoring plugin: even a usage error is UNKNOWN (3) with one status line."""

    def parse_args(self, ctx, args):
        from .monitoring import UNKNOWN

        if sys.stdout is None:  # nothing it finds out could be told: say so at once
            give_up(_prog(), "cannot write the output: standard output is closed", UNKNOWN)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            _plugin_exit_unknown(error.format_message())
        except OSError as error:  # -V or --help printed to a full disk
            give_up(_prog(), f"cannot write the output: {error.strerror or error}", UNKNOWN)


def plugin_print(text, prog="ovpndiag"):
    """A plugin's output: when it cannot be written, the monitoring system still gets
    UNKNOWN and the reason on stderr (not WARNING, as click makes of a broken pipe)."""
    from .monitoring import UNKNOWN

    try:
        emit(text)
    except OutputError as error:
        give_up(prog, f"cannot write the output: {error}", UNKNOWN)


def _plugin_exit_unknown(message):
    from .monitoring import Outcome, UNKNOWN
    from .render.nagios import plugin_output

    plugin_print(plugin_output(Outcome(UNKNOWN, message)), _prog())
    sys.exit(UNKNOWN)


def _prog():
    """The name to sign stderr lines with: ovpndiag, or a plugin of its own (check_openvpn)."""
    context = click.get_current_context(silent=True)
    if context is None or isinstance(context.find_root().command, click.Group):  # (ovpndiag's own group)
        return "ovpndiag"
    return context.find_root().info_name or "ovpndiag"


def plugin(function):
    """Run a check body: any unexpected error is UNKNOWN with a message, never a traceback."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SystemExit:
            raise
        except user_errors() as error:
            _plugin_exit_unknown(str(error))
        except Exception as error:  # a bug: still one line and UNKNOWN
            _plugin_exit_unknown(f"internal error: {type(error).__name__}: {error}")
    return run


def run_plugin(command, prog):
    """The entry point of a plugin of its own (check_openvpn): run() with monitoring
    statuses - whatever goes wrong is one line and UNKNOWN, never a traceback."""
    from .monitoring import UNKNOWN

    try:
        try:
            command.main(prog_name=prog)
        finally:
            flush_stdout()
    except OutputError as error:
        give_up(prog, f"cannot write the output: {error}", UNKNOWN)
    except Exception as error:  # the body is guarded by @plugin: this is click's own output failing
        give_up(prog, f"{type(error).__name__}: {error}", UNKNOWN)


def unbuffered_stdout():
    """A write function for standard output straight to its file descriptor: when a
    signal handler runs during a long write to a full pipe, CPython 3.11's buffered
    writer loses part of what it was given (seen: 256 KiB of lines), and a stopping
    signal is what sniff expects while its reader lags."""
    import io
    import os

    stdout = sys.stdout
    try:
        descriptor = stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):  # not a real file (tests in-process)
        return stdout.write
    stdout.flush()
    encoding, errors = stdout.encoding or "utf-8", stdout.errors or "strict"

    def write(text):
        view = memoryview(text.encode(encoding, errors))
        while view:
            view = view[os.write(descriptor, view):]
    return write


class StopOnSignals:
    """SIGINT and SIGTERM stop a live capture the same way: the first lets it show
    what the kernel already holds, the second stops it at once, a third is left to
    the signal's default action."""

    def __init__(self, capture):
        import signal

        self.capture, self.received = capture, 0
        self.previous = {number: signal.signal(number, self.handle) for number in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, number, _frame):
        import os
        import signal

        self.received += 1
        if self.received == 1:
            self.capture.stop()
        elif self.received == 2:
            self.capture.abandon()
        else:
            self.restore()
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)

    def restore(self):
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)
