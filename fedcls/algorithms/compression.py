"""Update compression, a plug-in with two halves that works under any strategy: a site sends its
model update (trained weights - the global weights it received) compressed, and the server turns
it back into weights before screening and the strategy see the reply. What travels is what the
bytes count measures (fedcls.apps.traffic).

``compression.kind``:
- ``float16``: the update in half precision;
- ``int8``: symmetric per-tensor quantisation, q = round(u / s) with s = max|u| / 127 (|u - q s| <= s / 2);
- ``topk``: the ``compression.topk_fraction`` largest-magnitude entries of each tensor (their
  int32 indices and float32 values), with error feedback (Seide et al. 2014; Stich et al. 2018):
  what a site leaves out is kept in its state and added to its next update, so nothing is lost,
  only delayed. ``compression.error_feedback`` applies the same to float16 and int8.

Only the model's floating-point weights are compressed; integer buffers (BatchNorm's counter) and
the strategies' own records (SCAFFOLD's control variates, EWC's importances) travel as they are.
Written by hand: Flower ships no update compression for its Message API (its comms mods only
log sizes).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.schema import Config

SEPARATOR = "@"  # "<weight key>@<part>": the compressed parts of one tensor in the reply's arrays
STATE = "compression"  # the site's error-feedback residuals, per weight key


def encode(kind: str, update: np.ndarray, fraction: float) -> dict[str, np.ndarray]:
    """The compressed parts of one float tensor's update."""
    if kind == "float16":
        return {"f16": update.astype(np.float16)}
    if kind == "int8":
        scale = float(np.abs(update).max()) / 127 if update.size else 0.0
        q = np.zeros(update.shape, np.int8) if scale == 0 else np.round(update / scale).astype(np.int8)
        return {"i8": q, "scale": np.array([scale], np.float32)}
    flat = update.reshape(-1)
    keep = max(1, math.ceil(fraction * flat.size))
    idx = np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep:] if keep < flat.size else np.arange(flat.size)
    idx = np.sort(idx).astype(np.int32)
    return {"idx": idx, "val": flat[idx].astype(np.float32)}


def decode(parts: dict[str, np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
    """One tensor's update from its compressed parts (as `encode` made them)."""
    if "f16" in parts:
        return parts["f16"].astype(dtype).reshape(shape)
    if "i8" in parts:
        return (parts["i8"].astype(np.float32) * parts["scale"][0]).astype(dtype).reshape(shape)
    flat = np.zeros(int(np.prod(shape)), dtype)
    flat[parts["idx"]] = parts["val"]
    return flat.reshape(shape)


class CompressionClient(ClientHalf):
    """The site's half: replaces each float weight by its compressed update (error feedback in its state)."""

    def __init__(self, cfg: Config):
        self.c = cfg.compression

    def outgoing(self, job, weights: dict, metrics: dict) -> tuple[dict, dict]:
        received = job.msg.content["arrays"]
        residuals = job.state.get(STATE, {}) if self.c.error_feedback else {}
        sent, kept = {}, {}
        for key, tensor in weights.items():
            value = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
            if not np.issubdtype(value.dtype, np.floating) or key not in received:
                sent[key] = value  # integer buffers travel as they are
                continue
            update = value - received[key].numpy()
            if key in residuals:
                update = update + residuals[key].numpy()
            parts = encode(self.c.kind, update, self.c.topk_fraction)
            sent.update({f"{key}{SEPARATOR}{part}": array for part, array in parts.items()})
            if self.c.error_feedback:
                kept[key] = torch.from_numpy(update - decode(parts, update.shape, update.dtype))
        if self.c.error_feedback:
            job.feature_state[STATE] = kept
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sent.items()}, metrics


class CompressionServer(Extension):
    """The server's half: turns each reply's compressed update back into weights (global + update)
    as it arrives, before screening and the strategy."""

    def __init__(self, cfg: Config):
        self.sent: ArrayRecord | None = None

    def before_train(self, rnd: int, arrays, grid, config) -> None:
        self.sent = arrays

    def arrived(self, rnd: int, replies: list, site_of_node: dict[int, int], sent_at: float) -> list:
        for reply in replies:
            if not reply.has_error() and "arrays" in reply.content.array_records:
                reply.content["arrays"] = self.weights(reply.content["arrays"])
        return replies

    def weights(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model's weights from a reply's arrays; parts that do not decode are left for the
        screening to refuse (an unexpected array)."""
        parts: dict[str, dict[str, np.ndarray]] = {}
        out: dict[str, Array] = {}
        for name, array in arrays.items():
            key, sep, part = name.rpartition(SEPARATOR)
            if sep and key in self.sent:
                parts.setdefault(key, {})[part] = array.numpy()
            else:
                out[name] = array
        for key, pieces in parts.items():
            base = self.sent[key].numpy()
            try:
                out[key] = Array(base + decode(pieces, base.shape, base.dtype))
            except (KeyError, IndexError, ValueError):
                out.update({f"{key}{SEPARATOR}{p}": Array(a) for p, a in pieces.items()})
        return ArrayRecord({k: out[k] for k in [*[k for k in self.sent if k in out], *[k for k in out if k not in self.sent]]})


FEATURE = Feature("compression", lambda cfg: cfg.compression.kind != "none",
                  server=lambda cfg, data: CompressionServer(cfg), client=CompressionClient)
