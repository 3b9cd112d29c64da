"""Checkpoints, so that a killed run resumes exactly: ``python -m fedcls.simulate resume=<run>``.

Every ``checkpoint_every`` rounds the server writes ``<run>/checkpoint.pt`` atomically: the global
weights, the strategy object (FedAdam's moments, SCAFFOLD's c, FedDyn's h, ...), the server
extensions (continual, CORAL), the metric rows and extras so far, and the RNG states. Each client
writes its state after training to ``<run>/client_state/`` (fedcls.apps.client_state, which the
server points at with PAYLOAD_KEY); a resumed run's clients start from their state as of the
checkpoint round.
The per-round seeds derive from (seed, round, site), so the resumed rounds are the same rounds.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from fedcls.errors import UserError

FILE = "checkpoint.pt"
CLIENT_DIR = "client_state"
PAYLOAD_KEY = "client-state"  # payload entry: {"dir": ..., "upto": last checkpointed round}


def save(run_dir: Path, rnd: int, arrays: dict, strategy, extensions: list, rows: list, extras: dict) -> None:
    blob = {"round": rnd, "arrays": arrays, "strategy": pickle.dumps(strategy),
            "extensions": pickle.dumps(extensions), "rows": rows, "extras": extras,
            "rng": {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    tmp = run_dir / (FILE + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, run_dir / FILE)


def load(run_dir: Path) -> dict:
    """The run's checkpoint, or a UserError saying why it cannot resume."""
    path = Path(run_dir) / FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no {FILE}: the run stopped before its first checkpoint (or ran "
                        f"with checkpoint_every=0); start it again instead")
    try:
        blob = torch.load(path, weights_only=False)
        blob["strategy"], blob["extensions"] = pickle.loads(blob["strategy"]), pickle.loads(blob["extensions"])
        return blob
    except Exception as err:  # noqa: BLE001 - any unreadable file is a corrupt checkpoint
        raise UserError(f"{path} is corrupt ({type(err).__name__}: {str(err)[:200]}); delete it and start "
                        f"the run again") from None


def restore_rng(blob: dict) -> None:
    random.setstate(blob["rng"]["random"])
    np.random.set_state(blob["rng"]["numpy"])
    torch.set_rng_state(blob["rng"]["torch"])
