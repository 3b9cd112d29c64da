"""A bounded per-process cache: a sweep runs many federations in one process (and its Ray
actors live across runs), so what is cached per config must not grow without end."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class BoundedCache(OrderedDict):
    """Keeps the `size` most recently used entries (written by hand: functools.lru_cache keys
    on the arguments, and a config dict is not hashable)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key not in self:
            self[key] = build()
            while len(self) > self.size:
                self.popitem(last=False)
        self.move_to_end(key)
        return self[key]
