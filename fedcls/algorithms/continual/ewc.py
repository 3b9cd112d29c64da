"""EWC at a site (Kirkpatrick et al., PNAS 2017) with Avalanche's EWCPlugin, kept stable.

Avalanche's penalty is ``lambda * sum_e sum_j F_e,j (w_j - w*_e,j)^2`` (no 1/2), summed over the
past experiences e (``separate``; ``online`` keeps one decayed F), where F is the mean over
minibatches of the squared minibatch gradient (with ``aggregate_importances``, the federation's
example-weighted mean of the sites' F). For weight j it is a quadratic of curvature
``h_j = 2 lambda T_j``, T_j = sum_e F_e,j. SGD with heavy-ball momentum rho (PyTorch's SGD) on a
quadratic of curvature h is stable iff ``0 < lr h < 2 (1 + rho)`` (the roots of
z^2 - (1 + rho - lr h) z + rho lie inside the unit circle; Polyak 1964), so the penalty alone is
stable iff

    lr * lambda * T_j < 1 + momentum        for every weight j.

T_j depends on the data and the model, so no config check can enforce it: in continual_classes
(lr 0.05, momentum 0.9, lambda 100) T reaches 2.2 on weights of a poorly fitted experience,
lr * lambda * T = 11 > 1.9, and the run diverged (loss 7e34 by round 9). So once the importances
are known (every round, before training), ``cap_importances`` scales weight j's importances of
every past experience by one factor so that ``lr * lambda * T_j <= ewc_cap * (1 + momentum)``:
weights below the cap keep Avalanche's penalty exactly; a capped weight gets the stiffest penalty
the optimiser can follow (capping F rather than lambda keeps the relative weight of the anchors).
``ewc_cap`` 0.5 leaves half of the bound to the cross-entropy's own curvature; ``ewc_cap=0``
runs Avalanche's penalty uncapped, and the server warns when it exceeds the bound.

Written by hand (Avalanche has neither): the cap and the stability ratio. The penalty, the
importances and their online/separate bookkeeping stay Avalanche's.
"""

from __future__ import annotations

import torch

from fedcls.algorithms.continual.plugins import PluginHook
from fedcls.algorithms.training import TrainContext
from fedcls.schema import Config

IMPORTANCE = "ewc.importance."  # reply records: a site's importances of a finished experience
FEDERATED = "ewc.federated."    # train-message records: the federation's aggregated importances
EXAMPLES = "__examples__"
RATIO, CAPPED = "ewc_stability", "ewc_capped"  # reply metrics (see EWCHook.after_training)


def stability_bound(momentum: float) -> float:
    """The largest stable lr * lambda * T_j for Avalanche's EWC penalty under SGD(momentum)."""
    return 1.0 + momentum


def penalised(plugin, exp: int) -> list[dict]:
    """The importance dicts Avalanche's penalty uses while training experience `exp`."""
    wanted = range(exp) if plugin.mode == "separate" else [exp - 1]
    return [plugin.importances[e] for e in wanted if e in plugin.importances]


def summed(groups: list[dict]) -> dict[str, torch.Tensor]:
    """T_j: each weight's importance summed over the penalised experiences."""
    total: dict[str, torch.Tensor] = {}
    for group in groups:
        for k, imp in group.items():
            total[k] = total[k] + imp.data if k in total else imp.data.clone()
    return total


def cap_importances(groups: list[dict], limit: float) -> tuple[float, float]:
    """Scale each weight's importances so that T_j <= limit (limit <= 0: leave them).
    Returns (max T_j before, fraction of weights capped)."""
    total = summed(groups)
    if not total:
        return 0.0, 0.0
    largest = max(float(t.max()) for t in total.values())
    if limit <= 0 or largest <= limit:
        return largest, 0.0
    capped = sum(int((t > limit).sum()) for t in total.values())
    scale = {k: (limit / t.clamp_min(limit)) for k, t in total.items()}
    for group in groups:
        for k, imp in group.items():
            imp.data = imp.data * scale[k]
    return largest, capped / sum(t.numel() for t in total.values())


class EWCHook(PluginHook):
    """Avalanche's EWC, optionally regularising toward the federation's importances (a site
    sends the importances of each experience it finishes, weighted by its examples; the
    server's weighted mean arrives with later train messages and replaces the site's own), with
    the penalty's curvature capped under the momentum-SGD stability bound (module docstring)."""

    def __init__(self, c: dict, new_plugin, stream, previous: int, current: int, inbox: dict):
        super().__init__("ewc", new_plugin, stream, previous, current)
        self.aggregate, self.inbox, self.cap = c.aggregate_importances, inbox, c.ewc_cap
        self.ratio, self.capped = 0.0, 0.0

    def finish_experience(self, ctx: TrainContext) -> None:
        super().finish_experience(ctx)
        imp = self.plugin.importances.get(self.previous)
        if self.aggregate and imp:
            n = len(self.view.experience.dataset)
            ctx.outbox[f"{IMPORTANCE}{self.previous}"] = {
                **{k: p.data.detach().cpu().clone() for k, p in imp.items()}, EXAMPLES: torch.tensor(float(n))}

    def before_training(self, ctx: TrainContext) -> None:
        super().before_training(ctx)
        for name, tensors in self.inbox.items():
            exp = int(name[len(FEDERATED):]) if name.startswith(FEDERATED) else None
            if exp is not None and exp in self.plugin.importances:
                for k, p in self.plugin.importances[exp].items():
                    p.data = tensors[k].to(p.data.device)
        self._enforce_bound(ctx)

    def _enforce_bound(self, ctx: TrainContext) -> None:
        group = ctx.optimizer.param_groups[0]
        lr, lam = group["lr"], self.plugin.ewc_lambda
        bound = stability_bound(group.get("momentum", 0.0))
        if lr * lam <= 0:
            return
        limit = self.cap * bound / (lr * lam)
        largest, self.capped = cap_importances(penalised(self.plugin, self.current), limit)
        self.ratio = lr * lam * largest / bound

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        """Metrics: the largest lr*lambda*T_j / (1 + momentum) before capping (>= 1: Avalanche's
        penalty alone would diverge) and the fraction of weights whose penalty was capped."""
        return {**super().after_training(ctx), RATIO: self.ratio, CAPPED: self.capped}


class EWCStabilityWarning(UserWarning):
    """EWC's penalty reached the momentum-SGD stability bound (capped, or uncapped: diverging)."""


def stability_warning(cfg: Config, ratio: float, capped: float, sites: list[int]) -> str:
    """The server's warning when a site's lr*lambda*T_j reached the bound (ratio >= 1)."""
    c, lr, rho = cfg.continual, cfg.lr, cfg.momentum
    bound, lam, cap = stability_bound(rho), c.ewc_lambda, c.ewc_cap
    head = (f"EWC at sites {sites}: lr*ewc_lambda*max F_j = {ratio * bound:.3g} reached the stability "
            f"bound 1+momentum = {bound:.3g} of SGD with momentum on Avalanche's penalty "
            f"lambda*F_j*(w_j-w*_j)^2")
    if cap > 0:
        return (f"{head}; the penalty of {capped:.2%} of the weights was capped at continual.ewc_cap="
                f"{cap} of the bound, so the run stays stable but those weights get less than "
                f"ewc_lambda's pull. For the full penalty lower lr (now {lr}) below {lr * cap / ratio:.3g} "
                f"or continual.ewc_lambda (now {lam}) below {lam * cap / ratio:.3g}.")
    return (f"{head}, and continual.ewc_cap=0 leaves it uncapped: local training will diverge. "
            f"Lower continual.ewc_lambda (now {lam}) below {lam / ratio:.3g} or lr (now {lr}) below "
            f"{lr / ratio:.3g}, or set continual.ewc_cap=0.5 to cap the stiffest weights' penalty.")
