"""Process-wide torch settings of a client process (a Ray actor, a SuperNode), applied once.

Every message carries the config, but torch's thread count and TF32 policy belong to the whole
process: each is set when it differs from what this module last set, not on every message.
"""

from __future__ import annotations

import contextlib

import torch

_applied: dict[str, object] = {}  # setting -> the value this process was given


def apply_torch_settings(num_threads: int, tf32: bool) -> None:
    """torch's intra-op threads, and TF32 matmuls and convolutions on (``backend.tf32``) or off
    (exact float32; PyTorch allows TF32 convolutions by default)."""
    num_threads, tf32 = max(int(num_threads), 1), bool(tf32)
    if _applied.get("num_threads") != num_threads:
        torch.set_num_threads(num_threads)
        _applied["num_threads"] = num_threads
    if _applied.get("tf32") != tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        _applied["tf32"] = tf32


@contextlib.contextmanager
def applied_within(num_threads: int, tf32: bool):
    """apply_torch_settings while inside, then this process's settings as they were: a driver
    whose clients train in it (the inprocess executor) outlives the run in a sweep or warm driver."""
    before = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              dict(_applied))
    _applied.clear()  # set both, whatever was set since this module last did (the run's numbers depend on them)
    apply_torch_settings(num_threads, tf32)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1], before[2]
        _applied.clear()
        _applied.update(before[3])


def applied() -> dict[str, object]:
    """What this process was given so far (for tests and diagnostics)."""
    return dict(_applied)
