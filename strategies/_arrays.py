"""Helpers shared by our server halves: numpy views of ArrayRecords and reply weights."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

STAT_MARKERS = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(key: str) -> bool:
    """BatchNorm statistics: averaged as they are, never treated as an SGD update."""
    return key.endswith(STAT_MARKERS)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def to_record(arrays: dict[str, np.ndarray], like: dict[str, np.ndarray] | None = None) -> ArrayRecord:
    """An ArrayRecord, each array cast back to the dtype of `like` (integer counters stay integers)."""
    like = like or {}
    return ArrayRecord({k: Array(np.asarray(v, dtype=like[k].dtype if k in like else None))
                        for k, v in arrays.items()})


def metrics_of(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def valid(replies) -> list[Message]:
    return [m for m in replies if not m.has_error()]


class KeepsGlobal:
    """Mixin for FedAvg subclasses: remembers the global weights sent this round (self.current)."""

    current: dict[str, np.ndarray] = {}

    def configure_train(self, server_round, arrays: ArrayRecord, config, grid):
        self.current = to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)
