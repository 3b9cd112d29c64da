"""Small builders for strategy tests: replies as Flower Messages without a running Grid."""

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict


def identity(monkeypatch):
    """Messages need a run, node and task id; a test outside a Grid sets them."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def record(**arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})


def train_reply(weights: dict, n: int, extra: dict | None = None, **metrics) -> Message:
    content = RecordDict({"arrays": record(**weights),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0, **metrics})})
    for name, arrays in (extra or {}).items():
        content[name] = record(**arrays)
    return Message(content=content, dst_node_id=0, message_type="train")
