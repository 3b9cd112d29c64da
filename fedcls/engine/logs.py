"""Flower's and Ray's logging, quieter unless verbose; their warnings silenced only while fedcls
calls them, so code of one's own in the same process still sees its warnings."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


def quiet_logs(verbose: bool) -> None:
    """Flower and Ray at warnings (and without run_simulation's deprecation notice) unless verbose."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if verbose:
        return
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropDeprecation) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropDeprecation())
    for handler in flwr_logger.handlers:
        if not any(isinstance(f, _DropDeprecation) for f in handler.filters):
            handler.addFilter(_DropDeprecation())
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
