"""Client state on the site's own disk, for deployments: a SuperNode restart empties
``context.state``, and some strategies cannot lose what a site keeps between rounds.

Which state a site keeps (all in ``context.state``, all saved here): SCAFFOLD's control variate
c_i, FedDyn's gradient term, MOON's previous model, FedBN's BatchNorm layers, EWC's importances
and saved weights, any Avalanche plugin's state, the replay memory, the continual progress, and
the participation counter. FedAvg, FedProx, FedNova, q-FedAvg and the server-side optimisers
keep nothing at the site (their counter only).

Set the SuperNode's node config ``state-dir=/path/on/the/site`` (e.g. ``--node-config
'partition-id=0 state-dir="/var/lib/fedcls"'``): after every training round the ClientApp writes
``<state-dir>/site-<id>.pt`` atomically, and a ClientApp whose context.state is empty (a fresh
SuperNode) loads it back before training. Simulations keep state in memory only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

PREFIX = "fedcls."


def state_path(context: Context, site: int) -> Path | None:
    folder = context.node_config.get("state-dir")
    return Path(str(folder)).expanduser() / f"site-{site}.pt" if folder else None


def restore(context: Context, site: int) -> bool:
    """Put the site's saved state into an empty context.state; True when something was loaded."""
    path = state_path(context, site)
    if path is None or not path.exists() or any(k.startswith(PREFIX) for k in context.state.array_records):
        return False
    for name, tensors in torch.load(path, weights_only=True).items():
        context.state[PREFIX + name] = ArrayRecord(tensors)
    return True


def persist(context: Context, site: int) -> None:
    """Write the site's state (every fedcls entry of context.state) atomically."""
    path = state_path(context, site)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k[len(PREFIX):]: rec.to_torch_state_dict() for k, rec in context.state.array_records.items()
             if k.startswith(PREFIX)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
