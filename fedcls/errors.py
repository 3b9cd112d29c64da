"""User-facing errors: each becomes one clear message and exit code 2, never a traceback.
A run stopped by Ctrl-C exits with 130; a client's failure travels as one line plus its traceback.

Ctrl-C while a simulation or sweep runs only sets ``STOP`` (``ctrl_c_deferred``); the command stops
at its next safe point (``stop_if_asked``; a simulation's round loop at its next grid call), so the
KeyboardInterrupt never lands inside a library. Measured before: Ctrl-C during start-up was
swallowed by an import and the run went on to completion, or landed in logging's module lock and
deadlocked the ServerApp thread, or the process segfaulted at exit. A second Ctrl-C interrupts at once.
"""

import contextlib
import difflib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

TRACEBACK_MARK = "\n\nRemote traceback:\n"  # in a failure reason: the one-line cause, this, the traceback


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data); exits with code 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration value, key or name."""


class DataError(UserError):
    """Data that cannot be found or read."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the run saved what it had computed and said so: exit code 130."""

    exit_code = 130


STOP = threading.Event()  # set by the first Ctrl-C while a command runs


@contextlib.contextmanager
def ctrl_c_deferred():
    """Within: the first Ctrl-C sets STOP (and says so), a second one raises KeyboardInterrupt.
    STOP belongs to one command: cleared on entry and on exit, so a later run in the same process
    (a notebook, a test) does not stop at its first safe point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()

    def first(signum, frame) -> None:
        STOP.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping at the next safe point (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.clear()


def stop_if_asked() -> None:
    """A safe point: raise KeyboardInterrupt if Ctrl-C was pressed."""
    if STOP.is_set():
        raise KeyboardInterrupt


def failure_reason(err: BaseException) -> str:
    """A client's failure as a Flower ``Error`` reason: ``Type: message``, then its traceback."""
    return f"{type(err).__name__}: {err}{TRACEBACK_MARK}{''.join(traceback.format_exception(err)).rstrip()}"


def short_reason(reason: str) -> str:
    """The one-line cause of a failure reason made by `failure_reason` (other reasons: as given)."""
    return reason.split(TRACEBACK_MARK, 1)[0]


def unknown_name(kind: str, name: object, valid: list[str], key: str | None = None) -> ConfigError:
    """ConfigError listing the valid names and the closest match to `name`."""
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    where = f" ({key})" if key else ""
    return ConfigError(f"unknown {kind} '{name}'{where}.{hint} Valid: {', '.join(sorted(valid))}.")


BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell tool killed by it reports


def run_cli(command: Callable[[list[str]], int], argv: list[str] | None, usage: str,
            defer_ctrl_c: bool = False) -> int:
    """A ``python -m fedcls.<tool>`` entry point: ``--help`` prints `usage`; otherwise `command`
    runs on the arguments, a UserError becoming one line and exit 2 (`defer_ctrl_c`: exit_code_of)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        return exit_code_of(lambda: print(usage) or 0)
    return exit_code_of(lambda: command(args), defer_ctrl_c)


def exit_code_of(command: Callable[[], int], defer_ctrl_c: bool = False) -> int:
    """Run a CLI command; a UserError becomes 'error: ...' on stderr and its exit code, Ctrl-C
    exit code 130 (a run reports its own interruption: fedcls.engine.runner). `defer_ctrl_c`: for
    commands that run simulations (they have safe points), Ctrl-C waits for the next one."""
    try:
        with ctrl_c_deferred() if defer_ctrl_c else contextlib.nullcontext():
            return command()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        if not isinstance(err, Interrupted):
            print("interrupted", file=sys.stderr)
        return Interrupted.exit_code
    except BrokenPipeError:  # the reader went away (`... --help | head`): no traceback, as a shell tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout at exit
        return BROKEN_PIPE_EXIT
