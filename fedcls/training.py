"""The ONE local training loop, with hooks, free of Flower types.

``local_update(model, data, params, hooks, state)`` trains a model that already holds the
global weights and returns (metrics, new state); the weights are the model's own. Algorithms
(FedProx's proximal term, SCAFFOLD's correction, EWC's penalty, CORAL's loss) are hooks that
compose; they are called in list order at these points of each step:

    local_keys(model) -> keys            which weights stay at the site (FedBN's BatchNorm)
    before_training(ctx)                 once, after the global weights are loaded; may
                                         replace ctx.data (replay adds its memory)
    per batch:  forward (ctx.features, ctx.logits) -> loss = CE (or params.loss_fn)
                                                           + sum(h.extra_loss(ctx))
                backward -> h.after_backward(ctx)   (gradient corrections)
                optimizer.step -> h.after_step(ctx)
    after_training(ctx) -> metrics       once; may update ctx.state and ctx.outbox

``ctx.state`` is the client's own state, kept across rounds (SCAFFOLD's c_i, FedDyn's gradient
term, MOON's previous model); ``ctx.outbox`` holds named tensors for the server besides the
weights (SCAFFOLD's delta c_i). The server's named tensors reach hooks when they are built.

Written by hand: the loop is ours (not Avalanche's template) so the same function serves
every strategy and the cohort executor (fedcls.cohort, which replays this loop's math for many
clients at once); batches are tensor slices, not a DataLoader, since
per-sample indexing and collation dominate a small CNN's step on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedcls.data.federated import SiteTensors


@dataclass
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0  # batch order and feature noise for this client and round
    # (outputs, targets) -> the batch's mean loss; None: cross-entropy. Another loss lets tests
    # drive the real loop on objectives with known optima (tests/test_quadratic.py); the cohort
    # executor replays cross-entropy only, so a client with its own loss trains alone
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class TrainContext:
    """What hooks see. ``global_params`` are detached copies of the weights received."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    global_params: list[torch.Tensor]
    state: dict[str, Any]
    params: TrainParams
    data: SiteTensors
    epoch: int = 0
    step: int = 0
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    features: torch.Tensor | None = None  # penultimate representation (models with a head)
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None  # the batch's cross-entropy, before extra losses
    outbox: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class LocalResult:
    """What local training gives back: metrics, the client's new state, extra named tensors."""

    metrics: dict[str, float]
    state: dict[str, Any]
    outbox: dict[str, dict[str, torch.Tensor]]
    examples: int = 0  # training samples (with replay: the current data and the memory)


class Hook:
    """Base class: override the points an algorithm needs."""

    def local_keys(self, model: nn.Module) -> set[str]:
        return set()

    def before_evaluate(self, model: nn.Module, state: dict[str, Any],
                        unlabelled: torch.Tensor | None = None) -> None:
        """Called before a site evaluates (or describes) the global model on its data;
        ``unlabelled``: the site's training images, for hooks that adapt without labels."""

    def before_training(self, ctx: TrainContext) -> None: ...

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor | None:
        return None

    def after_backward(self, ctx: TrainContext) -> None: ...

    def after_step(self, ctx: TrainContext) -> None: ...

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        return {}

    def cohort_terms(self) -> dict | None:
        """This hook's per-step math for the cohort executor (fedcls.cohort), read after
        before_training: ``{"prox_mu": mu}`` (a proximal term) and/or ``{"grad_correction":
        {name: tensor}}`` (added to each step's gradient before the optimiser's step). None: the
        hook cannot run in a cohort, and its client trains alone."""
        return None


def step_weight(steps: float, momentum: float) -> float:
    """a: how many times the gradient of an average step counts in the displacement of `steps`
    steps of torch's SGD with heavy-ball momentum rho (no dampening, buffer starting at 0):
    x - y = lr * sum_t (1 - rho^(steps-t+1)) / (1 - rho) * g_t, so with g_t = g,
    x - y = lr * a * g, a = (steps - rho (1 - rho^steps) / (1 - rho)) / (1 - rho); = steps at
    rho = 0 (Wang et al. 2020, FedNova, eq. for ||a_i||_1 with momentum)."""
    if momentum == 0.0:
        return float(steps)
    return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches (none for no data: a site may hold no samples of an
    experience, and randperm(0).split gives one empty batch, whose loss is NaN)."""
    return list(torch.randperm(n, generator=gen).split(batch_size)) if n else []


def with_noise(x: torch.Tensor, scale: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add the site's Gaussian feature noise (NIID-Bench's noise skew), if any."""
    if not bool((scale > 0).any()):
        return x
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    return x + scale.view(1, -1, 1, 1) * noise


def forward(model: nn.Module, ctx: TrainContext) -> None:
    """Logits (and features, for models split into features + head) of ctx.inputs."""
    if hasattr(model, "features") and hasattr(model, "head"):
        ctx.features = model.features(ctx.inputs)
        ctx.logits = model.head(ctx.features)
    else:
        ctx.logits = model(ctx.inputs)


def local_update(model: nn.Module, data: SiteTensors, params: TrainParams,
                 hooks: list[Hook], state: dict[str, Any]) -> LocalResult:
    """Train `model` in place on the site's train split."""
    gen = torch.Generator().manual_seed(params.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    ctx = TrainContext(model, optimizer, [p.detach().clone() for p in model.parameters()],
                       state, params, data)
    model.train()
    for hook in hooks:
        hook.before_training(ctx)
    data = ctx.data
    loss_sum, seen = torch.zeros((), device=data.train_x.device), 0
    for ctx.epoch in range(params.epochs):
        for idx in batches(len(data.train_y), params.batch_size, gen):
            idx = idx.to(data.train_x.device)
            ctx.inputs = with_noise(data.train_x[idx], data.noise_scale, gen)
            ctx.targets = data.train_y[idx]
            forward(model, ctx)
            ctx.loss = loss = (params.loss_fn or nn.functional.cross_entropy)(ctx.logits, ctx.targets)
            total = loss + sum((t for h in hooks if (t := h.extra_loss(ctx)) is not None), 0.0)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            for hook in hooks:
                hook.after_backward(ctx)
            optimizer.step()
            for hook in hooks:
                hook.after_step(ctx)
            loss_sum += loss.detach() * len(idx)  # no GPU sync per step
            seen += len(idx)
            ctx.step += 1
    metrics = {"train_loss": loss_sum.item() / max(seen, 1), "num-steps": float(ctx.step)}
    for hook in hooks:
        metrics.update(hook.after_training(ctx))
    return LocalResult(metrics, ctx.state, ctx.outbox, len(data.train_y))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             noise_scale: torch.Tensor | None = None, seed: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on (x, y)."""
    model.eval()
    if len(y) == 0:
        return 0.0, 0.0
    gen = torch.Generator().manual_seed(seed)
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if noise_scale is not None:
            xb = with_noise(xb, noise_scale, gen)
        logits = model(xb)
        loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss / len(y), correct / len(y)
