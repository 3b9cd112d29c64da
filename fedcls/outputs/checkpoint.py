"""Checkpoints, so that a killed run resumes exactly: ``python -m fedcls.simulate resume=<run>``.

Every ``checkpoint_every`` rounds the server writes ``<run>/checkpoint.pt`` atomically: the global
weights, the strategy object (FedAdam's moments, SCAFFOLD's c, FedDyn's h, ...), the server
extensions (continual, CORAL), the metric rows and extras so far, and the RNG states. Each client
writes its state (control variates, EWC importances, replay memory, counters) after training to
``<run>/client_state/site-<k>/round-<r>.pt`` (keeping the newest file at or before the last
checkpoint); a resumed run's clients start from the newest file at or before the checkpoint round.
The per-round seeds derive from (seed, round, site), so the resumed rounds are the same rounds.
"""

from __future__ import annotations

import os
import pickle
import random
import re
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


def _rounds(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("round-*.pt") if (m := re.fullmatch(r"round-(\d+)\.pt", p.name))]
    return sorted(found)


def write_client_state(spec: dict, site: int, rnd: int, state: dict) -> None:
    """Save a client's state after round `rnd`; drop files no checkpoint can need any more."""
    folder = Path(spec["dir"]) / f"site-{site}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"round-{rnd}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / f"round-{rnd}.pt")
    kept = [r for r, _ in _rounds(folder) if r <= spec["upto"]]
    newest_checkpointed = max(kept, default=None)
    for r, path in _rounds(folder):
        if r < rnd and r != newest_checkpointed:
            path.unlink(missing_ok=True)


def read_client_state(spec: dict, site: int) -> dict | None:
    """The client's state as of the last checkpoint (None: it had not trained by then)."""
    folder = Path(spec["dir"]) / f"site-{site}"
    files = [p for r, p in _rounds(folder) if r <= spec["upto"]] if folder.exists() else []
    return torch.load(files[-1], weights_only=True) if files else None
