"""A site's continual method as hooks for the one client loop.

    naive        no hook: the site trains on its current experience only
    ewc          Avalanche's EWCPlugin (Kirkpatrick et al., PNAS 2017): lambda, separate/online
                 mode, decay; optionally the federation's aggregated importances; the penalty's
                 curvature capped under the momentum-SGD stability bound (ewc.py)
    replay       Avalanche's ExperienceBalancedBuffer memory (replay.py)
    ewc+replay   both
    plus any Avalanche plugin listed in ``continual.plugins`` (plugins.py)

The site's progress (the last experience it trained on) is kept in the client state, so a
site that reaches a new experience -- in whatever round, after however many rounds away --
first closes the experience it finished (EWC importances, replay memory), then trains.
"""

from __future__ import annotations

import torch

from fedcls.algorithms.continual.ewc import EXAMPLES, FEDERATED, IMPORTANCE, EWCHook  # noqa: F401 (re-exported)
from fedcls.algorithms.continual.plugins import PluginHook, make_plugin
from fedcls.algorithms.continual.replay import ReplayHook
from fedcls.algorithms.training import Hook, TrainContext
from fedcls.schema import Config

PROGRESS_KEY = "continual"


def last_trained(state: dict) -> int:
    """The experience the site trained on last (-1 before its first round)."""
    return int(state.get(PROGRESS_KEY, {}).get("experience", torch.tensor(-1)))


def new_ewc(c: dict):
    from avalanche.training.plugins import EWCPlugin

    online = c.ewc_mode == "online"
    return EWCPlugin(c.ewc_lambda, mode=c.ewc_mode, decay_factor=c.ewc_decay if online else None)


class Progress(Hook):
    """Records the experience trained on this round (runs after the method hooks)."""

    def __init__(self, current: int):
        self.current = current

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        ctx.state[PROGRESS_KEY] = {"experience": torch.tensor(self.current)}
        return {"experience": float(self.current)}


def continual_hooks(cfg: Config, stream, current: int, state: dict, inbox: dict) -> list[Hook]:
    """The hooks of cfg's continual method for a site on experience `current`."""
    c, previous = cfg.continual, last_trained(state)
    methods = c.method.split("+")
    hooks: list[Hook] = []
    if "ewc" in methods:
        hooks.append(EWCHook(c, lambda: new_ewc(c), stream, previous, current, inbox))
    if "replay" in methods:
        hooks.append(ReplayHook(c.memory_size, stream, previous, current))
    for i, spec in enumerate(c.plugins):
        hooks.append(PluginHook(f"plugin.{i}", lambda s=spec: make_plugin(s), stream, previous, current))
    return hooks + [Progress(current)]
