"""Flower's and Ray's logging, quieter unless verbose; their warnings silenced only while fedcls
calls them, so code of one's own in the same process still sees its warnings."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

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


@contextlib.contextmanager
def quiet_warnings(verbose: bool):
    """Within the block, Deprecation and Future warnings are not shown (unless verbose); the
    process's warning filters are as before once it ends. Wraps fedcls's calls into Flower and Ray."""
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
        yield
