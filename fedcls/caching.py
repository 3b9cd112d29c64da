"""A bounded per-process cache: a sweep runs many federations in one process (and its Ray
actors live across runs), so what is cached per config must not grow without end. And arrays
kept on disk for the next process (``cached_npz``)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any
from weakref import ref

_EVERY_CACHE: list[ref] = []  # weak references, each removed when its cache is gone (a dict is not hashable: no WeakSet)


class BoundedCache(OrderedDict):
    """Keeps the `size` most recently used entries (written by hand: functools.lru_cache keys
    on the arguments, and a config dict is not hashable)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        _EVERY_CACHE.append(ref(self, _EVERY_CACHE.remove))

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key not in self:
            self[key] = build()
            while len(self) > self.size:
                self.popitem(last=False)
        self.move_to_end(key)
        return self[key]


def forget_everything() -> None:
    """Empty every BoundedCache of this process: a client actor kept from an earlier command
    (backend.keep_actors) builds its data again, as files on disk may have changed since."""
    for cache in [alive() for alive in _EVERY_CACHE]:
        if cache is not None:  # collected since the list was read
            cache.clear()


def cached_npz(path: Path, build: Callable[[], dict], required: tuple[str, ...] = ()) -> dict:
    """The arrays stored in `path` (.npz) when it holds every `required` one; else `build()`'s,
    written there for the next process (atomically: a reader never sees half a file; a read-only
    folder only costs building again). Ray actors read what the driver built once."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as stored:
            if all(key in stored for key in required):
                return dict(stored)
    except (OSError, ValueError):
        pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
    return arrays
