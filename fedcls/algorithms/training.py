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
                  (+ the hooks' StepTerms proximal term)
                backward -> h.after_backward(ctx)
                sgd_step (SGD with the StepTerms' corrections) -> h.after_step(ctx)
    after_training(ctx) -> metrics       once; may update ctx.state and ctx.outbox

``ctx.state`` is the client's own state, kept across rounds (SCAFFOLD's c_i, FedDyn's gradient
term, MOON's previous model); ``ctx.outbox`` holds named tensors for the server besides the
weights (SCAFFOLD's delta c_i). The server's named tensors reach hooks when they are built.

A hook whose per-step math is a proximal term or a gradient/step correction declares it as typed
``StepTerms`` (``h.step_terms()``, read after before_training) instead of writing it into the
loop: the functions below (``step_plan``, ``proximal_term``, ``sgd_step``) are THE step, called
here for one client and, on stacked weights, by the cohort executor (fedcls.apps.cohort.train)
for many at once; a hook with its own extra_loss/after_backward/after_step trains alone there.

Written by hand: the loop is ours (not Avalanche's template) so the same function serves
every strategy and the cohort executor; batches are tensor slices, not a DataLoader, since
per-sample indexing and collation dominate a small CNN's step on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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


@dataclass
class StepTerms:
    """A hook's part of every local step, in a form both executors apply (merged over hooks):
    ``prox_mu``: (mu/2) ||w - w_global||^2 added to the loss (FedProx); ``grad_correction``:
    added to each step's gradient before weight decay and momentum (SCAFFOLD, correction=gradient);
    ``step_correction``: lr times it subtracted after each step, outside momentum (SCAFFOLD, step).
    Corrections are keyed by parameter name."""

    prox_mu: float = 0.0
    grad_correction: dict[str, torch.Tensor] | None = None
    step_correction: dict[str, torch.Tensor] | None = None


def step_terms_of(hooks: list) -> StepTerms:
    """The hooks' StepTerms together: proximal weights add, corrections add per parameter."""
    terms = [s for h in hooks if (s := h.step_terms()) is not None]

    def added(key: str) -> dict[str, torch.Tensor] | None:
        found = [getattr(s, key) for s in terms if getattr(s, key) is not None]
        return {n: sum(f[n] for f in found) for n in found[0]} if found else None
    return StepTerms(sum(s.prox_mu for s in terms), added("grad_correction"), added("step_correction"))


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

    def step_terms(self) -> StepTerms | None:
        """This hook's per-step math as StepTerms, read after before_training (both executors
        apply them). A hook that overrides this (and none of extra_loss, after_backward,
        after_step) can train in a cohort; None: no terms."""
        return None


PER_STEP_POINTS = ("extra_loss", "after_backward", "after_step")


def runs_in_cohort(hook: Hook) -> bool:
    """A hook the cohort executor can replay: its step math is all in step_terms."""
    kind = type(hook)
    return (kind.step_terms is not Hook.step_terms
            and all(getattr(kind, point) is getattr(Hook, point) for point in PER_STEP_POINTS))


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


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch over n samples: ceil(n / batch_size)."""
    return -(-n // batch_size)


def num_steps(n: int, params: TrainParams) -> int:
    """Local steps over n samples: epochs x ceil(n / batch_size)."""
    return params.epochs * steps_per_epoch(n, params.batch_size)


def step_plan(data: SiteTensors, params: TrainParams) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each step's (batch indices, feature noise or None), drawn from the client's seeded CPU
    generator: per epoch a permutation, then per batch the noise (NIID-Bench's noise skew)."""
    gen = torch.Generator().manual_seed(params.seed)
    noisy, device = bool((data.noise_scale > 0).any()), data.train_x.device
    shape = tuple(data.train_x.shape[1:])
    for _ in range(params.epochs):
        for idx in batches(len(data.train_y), params.batch_size, gen):
            noise = torch.randn((len(idx), *shape), generator=gen).to(device) if noisy else None
            yield idx.to(device), noise


def add_noise(x: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """x plus the site's per-channel noise scale times the drawn noise (none: x)."""
    return x if noise is None else x + scale.view(1, -1, 1, 1) * noise


def with_noise(x: torch.Tensor, scale: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add the site's Gaussian feature noise, if any, drawing it from `gen` (evaluation)."""
    if not bool((scale > 0).any()):
        return x
    return add_noise(x, scale, torch.randn(x.shape, generator=gen).to(x.device))


def proximal_term(weights: Iterable[torch.Tensor], start: Iterable[torch.Tensor], mu) -> torch.Tensor:
    """(mu/2) sum ||w - w_start||^2 (FedProx's h_k; mu may be a per-client tensor when vmapped)."""
    return 0.5 * mu * sum(((w - s) ** 2).sum() for w, s in zip(weights, start))


@torch.no_grad()
def sgd_step(w: torch.Tensor, grad: torch.Tensor | None, buf: torch.Tensor | None, lr: float,
             momentum: float, weight_decay: float, grad_correction: torch.Tensor | None = None,
             step_correction: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One parameter's step: torch.optim.SGD's math (weight decay, heavy-ball momentum without
    dampening, the buffer starting at the first d; bit-identical on CPU, tests/test_training.py)
    with the StepTerms' corrections around it. Elementwise, so it serves stacked clients too.
    Returns (new weights, new buffer); a parameter without a gradient only takes the step correction."""
    new = w
    if grad is not None:
        d = grad if grad_correction is None else grad + grad_correction
        if weight_decay:
            d = d.add(w, alpha=weight_decay)
        if momentum:
            buf = d.clone() if buf is None else buf.mul(momentum).add_(d)
            d = buf
        new = w.add(d, alpha=-lr)
    if step_correction is not None:
        new = new.sub(step_correction, alpha=lr)
    return new, buf


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
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)  # holds the step's settings and buffers
    ctx = TrainContext(model, optimizer, [p.detach().clone() for p in model.parameters()],
                       state, params, data)
    model.train()
    for hook in hooks:
        hook.before_training(ctx)
    data, terms = ctx.data, step_terms_of(hooks)
    loss_sum, seen = torch.zeros((), device=data.train_x.device), 0
    per_epoch = steps_per_epoch(len(data.train_y), params.batch_size)
    for idx, noise in step_plan(data, params):
        ctx.epoch = ctx.step // per_epoch
        ctx.inputs, ctx.targets = add_noise(data.train_x[idx], data.noise_scale, noise), data.train_y[idx]
        forward(model, ctx)
        ctx.loss = loss = (params.loss_fn or nn.functional.cross_entropy)(ctx.logits, ctx.targets)
        extra = [proximal_term(model.parameters(), ctx.global_params, terms.prox_mu)] if terms.prox_mu else []
        total = loss + sum(extra + [t for h in hooks if (t := h.extra_loss(ctx)) is not None], 0.0)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        for hook in hooks:
            hook.after_backward(ctx)
        apply_step(model, optimizer, terms)
        for hook in hooks:
            hook.after_step(ctx)
        loss_sum += loss.detach() * len(idx)  # no GPU sync per step
        seen += len(idx)
        ctx.step += 1
    metrics = {"train_loss": loss_sum.item() / max(seen, 1), "num-steps": int(ctx.step)}
    for hook in hooks:
        metrics.update(hook.after_training(ctx))
    return LocalResult(metrics, ctx.state, ctx.outbox, len(data.train_y))


@torch.no_grad()
def apply_step(model: nn.Module, optimizer: torch.optim.Optimizer, terms: StepTerms) -> None:
    """sgd_step on every parameter, with the optimiser's current settings (a plugin may change
    them) and its momentum buffers (kept where torch keeps them)."""
    group = optimizer.param_groups[0]
    for name, p in model.named_parameters():
        slot = optimizer.state[p]
        new, slot["momentum_buffer"] = sgd_step(
            p, p.grad, slot.get("momentum_buffer"), group["lr"], group["momentum"], group["weight_decay"],
            (terms.grad_correction or {}).get(name), (terms.step_correction or {}).get(name))
        p.copy_(new)


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
