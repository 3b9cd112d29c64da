"""Flower's and Ray's logging, quieter unless verbose; other libraries' warnings during a run go to
<run folder>/warnings.log (WarningsLog), so the console shows fedcls's lines and fedcls's own advice;
outside a run, Flower's deprecations are silenced only while fedcls calls it, so code of one's own
in the same process still sees its warnings."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from fedcls.outputs.results import WARNINGS_FILE

FEDCLS_DIR = str(Path(__file__).resolve().parents[1])  # the fedcls package: its warnings are advice

# where Flower's simulation runtime logs a client's exception, tens of lines each: the round loop
# keeps it instead (one line in metrics.jsonl and on the console, all of it in client_errors.txt)
CLIENT_ERROR_SITES = {("vce_api", "worker"), ("raybackend", "process_message")}


class _Quiet(logging.Filter):
    """Drops run_simulation's deprecation notice and the runtime's client tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        client_error = record.levelno >= logging.ERROR and (record.module, record.funcName) in CLIENT_ERROR_SITES
        return not client_error and "deprecated" not in record.getMessage().lower()


def quiet_logs(verbose: bool) -> None:
    """Flower and Ray at warnings, less the records _Quiet drops, unless verbose."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if verbose:
        return
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.WARNING)
    for where in (flwr_logger, *flwr_logger.handlers):
        if not any(isinstance(f, _Quiet) for f in where.filters):
            where.addFilter(_Quiet())
    logging.getLogger("ray").setLevel(logging.WARNING)


class WarningsLog:
    """Where a run's warnings go: fedcls's own (advice about the run, e.g. EWC's stability) to the
    console, every other library's to <run folder>/warnings.log, one entry per place that warns
    (held until the run folder exists: the data is built before it)."""

    def __init__(self, console):
        self.console, self.path, self.pending = console, None, []

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("fedcls") or filename.startswith(FEDCLS_DIR):
            self.console(message, category, filename, lineno, file, line)  # as Python shows it
            return
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if self.path is None:
            self.pending.append(text)
        else:
            with self.path.open("a") as f:
                f.write(text)

    def into(self, run_dir: Path) -> None:
        """From now on write to run_dir/WARNINGS_FILE, starting with the warnings held so far."""
        self.path = Path(run_dir) / WARNINGS_FILE
        pending, self.pending = self.pending, []
        if pending:
            with self.path.open("a") as f:
                f.writelines(pending)


@contextlib.contextmanager
def warnings_to_log(verbose: bool):
    """Within (one run), warnings go where WarningsLog says (verbose: all to the console, as
    Python shows them); yields the WarningsLog (None when verbose). Filters are restored after."""
    with warnings.catch_warnings():
        if verbose:
            yield None
            return
        log = WarningsLog(warnings.showwarning)
        warnings.showwarning = log.show  # the filters stay the user's and Python's
        yield log


def _logging_to_file() -> bool:
    return isinstance(getattr(warnings.showwarning, "__self__", None), WarningsLog)


@contextlib.contextmanager
def quiet_warnings(verbose: bool):
    """Within the block, Deprecation and Future warnings are not shown (unless verbose, or a run's
    WarningsLog keeps them); the process's warning filters are as before once it ends. Wraps
    fedcls's calls into Flower and Ray."""
    with warnings.catch_warnings():
        if not verbose and not _logging_to_file():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
        yield
