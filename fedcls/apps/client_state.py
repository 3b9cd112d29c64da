"""A site's state between rounds, in one place: what the strategy's and the features' hooks keep
(SCAFFOLD's control variate c_i, FedDyn's gradient term, MOON's previous model, FedBN's
BatchNorm layers, EWC's importances and saved weights, any Avalanche plugin's state, the replay
memory, the continual progress) and the participation counter. FedAvg, FedProx, FedNova, q-FedAvg
and the server-side optimisers keep nothing at the site but the counter.

The state lives in the Flower Context (``context.state``, one ArrayRecord per name), in simulation
and deployment alike. ``load`` and ``save`` are its one path in and out, and ``save`` also writes it
to the places that outlive the process, when configured; ``load`` reads them back into an empty
context (a new process):

- a deployed site's own disk: the SuperNode's node config ``state-dir=/path/on/the/site`` (e.g.
  ``--node-config 'partition-id=0 state-dir="/var/lib/fedcls"'``) -> ``<state-dir>/site-<id>.pt``;
- a simulation's checkpoint (fedcls.outputs.checkpoint): the server names the run's
  ``client_state`` folder and its last checkpointed round in every message
  (``checkpoint.PAYLOAD_KEY``) -> ``<run>/client_state/site-<k>/round-<r>.pt``, of which the newest at
  or before the last checkpoint is kept, and a resumed run's clients start from it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

PREFIX = "fedcls."  # client state entries in context.state


def load(context: Context, site: int, checkpointed: dict | None = None) -> dict:
    """The site's state: context.state, filled first (when empty) from its state-dir or, in a
    resumed simulation, its last checkpointed state (`checkpointed`: the payload's client_state)."""
    if not _held(context):
        saved = _read_state_dir(context, site)
        if saved is None and checkpointed:
            saved = _read_checkpointed(checkpointed, site)
        _put(context, saved or {})
    return {key[len(PREFIX):]: rec.to_torch_state_dict()
            for key, rec in context.state.array_records.items() if key.startswith(PREFIX)}


def save(context: Context, site: int, state: dict, checkpointed: dict | None, rnd: int) -> None:
    """Keep `state` in the context and write it wherever it must outlive the process."""
    _put(context, state)
    path, spec = state_path(context, site), checkpointed
    if path is None and not spec:
        return
    kept = load(context, site)  # every entry, also those this round's hooks did not touch
    if path is not None:
        _atomic_save(kept, path)
    if spec:
        _write_checkpointed(spec, site, rnd, kept)


def _held(context: Context) -> bool:
    return any(k.startswith(PREFIX) for k in context.state.array_records)


def _put(context: Context, state: dict) -> None:
    for name, tensors in state.items():
        context.state[PREFIX + name] = ArrayRecord({k: v.detach().cpu() for k, v in tensors.items()})


def _atomic_save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def state_path(context: Context, site: int) -> Path | None:
    folder = context.node_config.get("state-dir")
    return Path(str(folder)).expanduser() / f"site-{site}.pt" if folder else None


def _read_state_dir(context: Context, site: int) -> dict | None:
    path = state_path(context, site)
    return torch.load(path, weights_only=True) if path is not None and path.exists() else None


def _rounds(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in folder.glob("round-*.pt") if (m := re.fullmatch(r"round-(\d+)\.pt", p.name))]
    return sorted(found)


def _write_checkpointed(spec: dict, site: int, rnd: int, state: dict) -> None:
    """Save the state after round `rnd`; drop files no checkpoint can need any more."""
    folder = Path(spec["dir"]) / f"site-{site}"
    _atomic_save(state, folder / f"round-{rnd}.pt")
    newest_checkpointed = max((r for r, _ in _rounds(folder) if r <= spec["upto"]), default=None)
    for r, path in _rounds(folder):
        if r < rnd and r != newest_checkpointed:
            path.unlink(missing_ok=True)


def _read_checkpointed(spec: dict, site: int) -> dict | None:
    """The state as of the last checkpoint (None: the site had not trained by then)."""
    folder = Path(spec["dir"]) / f"site-{site}"
    files = [p for r, p in _rounds(folder) if r <= spec["upto"]] if folder.exists() else []
    return torch.load(files[-1], weights_only=True) if files else None
