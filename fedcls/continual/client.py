"""A site's continual method as hooks for the one client loop.

    naive        no hook: the site trains on its current experience only
    ewc          Avalanche's EWCPlugin (Kirkpatrick et al., PNAS 2017): lambda, separate/online
                 mode, decay; optionally the federation's aggregated importances
    replay       Avalanche's ExperienceBalancedBuffer memory (replay.py)
    ewc+replay   both
    plus any Avalanche plugin listed in ``continual.plugins`` (plugins.py)

The site's progress (the last experience it trained on) is kept in the client state, so a
site that reaches a new experience -- in whatever round, after however many rounds away --
first closes the experience it finished (EWC importances, replay memory), then trains.
"""

from __future__ import annotations

import torch

from fedcls.continual.plugins import PluginHook, make_plugin
from fedcls.continual.replay import ReplayHook
from fedcls.training import Hook, TrainContext

PROGRESS_KEY = "continual"
IMPORTANCE = "ewc.importance."  # reply records: a site's importances of a finished experience
FEDERATED = "ewc.federated."    # train-message records: the federation's aggregated importances
EXAMPLES = "__examples__"


def last_trained(state: dict) -> int:
    """The experience the site trained on last (-1 before its first round)."""
    return int(state.get(PROGRESS_KEY, {}).get("experience", torch.tensor(-1)))


def new_ewc(c: dict):
    from avalanche.training.plugins import EWCPlugin

    online = c["ewc_mode"] == "online"
    return EWCPlugin(c["ewc_lambda"], mode=c["ewc_mode"], decay_factor=c["ewc_decay"] if online else None)


class EWCHook(PluginHook):
    """EWC, optionally regularising toward the federation's importances: a site sends the
    importances of each experience it finishes (weighted by its examples); the server's
    weighted mean arrives with later train messages and replaces the site's own."""

    def __init__(self, c: dict, stream, previous: int, current: int, inbox: dict):
        super().__init__("ewc", lambda: new_ewc(c), stream, previous, current)
        self.aggregate, self.inbox = c["aggregate_importances"], inbox

    def finish_experience(self, ctx: TrainContext) -> None:
        super().finish_experience(ctx)
        imp = self.plugin.importances.get(self.previous)
        if self.aggregate and imp:
            n = len(self.view.experience.dataset)
            ctx.outbox[f"{IMPORTANCE}{self.previous}"] = {
                **{k: p.data.detach().cpu() for k, p in imp.items()}, EXAMPLES: torch.tensor(float(n))}

    def before_training(self, ctx: TrainContext) -> None:
        super().before_training(ctx)
        for name, tensors in self.inbox.items():
            exp = int(name[len(FEDERATED):]) if name.startswith(FEDERATED) else None
            if exp is not None and exp in self.plugin.importances:
                for k, p in self.plugin.importances[exp].items():
                    p.data = tensors[k].to(p.data.device)


class Progress(Hook):
    """Records the experience trained on this round (runs after the method hooks)."""

    def __init__(self, current: int):
        self.current = current

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        ctx.state[PROGRESS_KEY] = {"experience": torch.tensor(self.current)}
        return {"experience": float(self.current)}


def continual_hooks(cfg: dict, stream, current: int, state: dict, inbox: dict) -> list[Hook]:
    """The hooks of cfg's continual method for a site on experience `current`."""
    c, previous = cfg["continual"], last_trained(state)
    methods = c["method"].split("+")
    hooks: list[Hook] = []
    if "ewc" in methods:
        hooks.append(EWCHook(c, stream, previous, current, inbox))
    if "replay" in methods:
        hooks.append(ReplayHook(c["memory_size"], stream, previous, current))
    for i, spec in enumerate(c["plugins"]):
        hooks.append(PluginHook(f"plugin.{i}", lambda s=spec: make_plugin(s), stream, previous, current))
    return hooks + [Progress(current)]
