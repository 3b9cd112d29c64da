"""Checkpoints, so that a killed run resumes exactly: ``python -m fedcls.simulate resume=<run>``.

Every ``checkpoint_every`` rounds the server writes ``<run>/checkpoint.pt`` atomically: the global
weights, the strategy's state (FedAdam's moments, SCAFFOLD's c, FedDyn's h, ...) and the server
extensions' (continual, CORAL), the metric rows and extras so far, and the RNG states -- all as data
(fedcls.outputs.state_codec), read back with ``torch.load(weights_only=True)``: loading a checkpoint
runs no code from the file. A resume builds the strategy and extensions from the run's config and
writes the saved state into them. Each client
writes its state after training to ``<run>/client_state/`` (fedcls.apps.client_state, which the
server points at with PAYLOAD_KEY); a resumed run's clients start from their state as of the
checkpoint round.
The per-round seeds derive from (seed, round, site), so the resumed rounds are the same rounds.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from fedcls.errors import UserError
from fedcls.outputs.state_codec import encode, restore

VERSION = 2  # 1: the strategy and extensions pickled (refused: loading ran code from the file)

FILE = "checkpoint.pt"
CLIENT_DIR = "client_state"
PAYLOAD_KEY = "client-state"  # payload entry: {"dir": ..., "upto": last checkpointed round}


def save(run_dir: Path, rnd: int, arrays: dict, strategy, extensions: list, rows: list, extras: dict) -> None:
    blob = {"version": VERSION, "round": rnd, "arrays": arrays, "strategy": encode(strategy),
            "extensions": [encode(ext) for ext in extensions], "rows": rows, "extras": extras,
            "rng": encode(_RngStates(random.getstate(), np.random.get_state(), torch.get_rng_state()))}
    tmp = run_dir / (FILE + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, run_dir / FILE)


class _RngStates:
    def __init__(self, python, numpy, torch_state):
        self.python, self.numpy, self.torch = python, numpy, torch_state


def load(run_dir: Path) -> dict:
    """The run's checkpoint (its strategy and extension states to ``restore_into`` fresh ones), or a
    UserError saying why it cannot resume. Nothing in the file can run code (weights_only)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no {FILE}: the run stopped before its first checkpoint (or ran "
                        f"with checkpoint_every=0); start it again instead")
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or code-carrying file is refused
        raise UserError(f"{path} is not a fedcls checkpoint that loads as data ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160]}); delete it and start the run again") from None
    if not isinstance(blob, dict) or blob.get("version") != VERSION:
        found = blob.get("version", 1) if isinstance(blob, dict) else "none"
        raise UserError(f"{path} has checkpoint format version {found}, this fedcls reads version {VERSION}; "
                        f"delete it and start the run again")
    return blob


def restore_into(blob: dict, strategy, extensions: list) -> None:
    """Write the checkpoint's strategy and extension states into fresh ones of the same config."""
    if len(extensions) != len(blob["extensions"]):
        raise UserError("the checkpoint's server features differ from this config's: resume with the run's own "
                        "config.yaml")
    restore(strategy, blob["strategy"])
    for ext, state in zip(extensions, blob["extensions"]):
        restore(ext, state)


def restore_rng(blob: dict) -> None:
    rng = _RngStates(None, None, None)
    restore(rng, blob["rng"])
    random.setstate(rng.python)
    np.random.set_state(rng.numpy)
    torch.set_rng_state(rng.torch)
