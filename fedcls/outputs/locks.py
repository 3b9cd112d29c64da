"""Folder locks: one process at a time writes into a study or a run folder (issue 16: two sweeps of
one study deleted and interleaved each other's runs). A lock is the file ``<folder>/.lock``, created
with O_EXCL and holding the holder's host and pid; a lock whose holder process is gone (killed,
crashed) is stale and is taken over. Hand-written: fcntl locks vanish with the holder but do not say
who holds them, and the standard library has no portable named lock."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from fedcls.errors import UserError

LOCK = ".lock"


@contextlib.contextmanager
def holding(folder: Path, what: str):
    """Hold `folder`'s lock while the block runs; UserError naming the holder if a live process has it."""
    path = Path(folder) / LOCK
    _acquire(path, what)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _acquire(path: Path, what: str) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    for _ in range(3):  # a stale lock is removed, then claimed again (another process may win)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _alive(holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                raise UserError(f"{what} {path.parent} is in use by process {holder['pid']} on {holder['host']} "
                                f"(since {since}): wait for it to end, or stop it") from None
            path.unlink(missing_ok=True)  # stale: its holder is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise UserError(f"could not lock {path.parent}: other processes keep claiming it; try again")


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and "pid" in holder else None
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so respect it
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
