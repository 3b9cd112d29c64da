"""Sample-level differential privacy at each site: DP-SGD (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016), a plug-in with two halves over Opacus.

``privacy.dp=dpsgd``: every site trains its local epochs with DP-SGD: each batch is drawn by
Poisson sampling (each sample in with probability q = 1 / batches per epoch), each sample's
gradient is clipped to L2 norm ``privacy.clipping_norm`` (C), and Gaussian noise of std z * C is
added to their sum before the SGD step (lr, momentum, weight decay as configured). z is
``privacy.noise_multiplier``, or, with ``privacy.target_epsilon`` set, the z (per site: it depends
on the site's sample count n) with which a site that trains in every round spends that epsilon
(within 0.01) by the end of the run (``noise_for_target``). The guarantee is per site, about its own
samples, at ``privacy.delta``.

Accounting: the site keeps its accountant's history (z, q, steps) in its state across rounds and
reports ``dp-epsilon`` (spent so far, RDP), ``dp-noise-multiplier`` and ``dp-steps``; the server
half records the largest epsilon over the sites (and each site's) in every metrics row and in
summary.json (``privacy``).

Not applied under DP-SGD: the strategy's and other features' training hooks (FedProx's term,
SCAFFOLD's correction...): the site refuses to train with any, so DP-SGD goes with strategies
whose client half adds none (FedAvg, FedAvgM, FedAdam & co.). The cohort executor's precision
and channels-last settings do not apply: a DP-SGD site always trains alone, in fp32.

Written by hand: only the wiring (the data loader, the seeds, the training loop around Opacus's
optimizer, the history in the site's state). Opacus does the per-sample gradients and clipping,
the noise, the Poisson sampling and the RDP accounting (Mironov 2017).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.algorithms.training import Hook, LocalResult, TrainParams, add_noise, steps_per_epoch
from fedcls.schema import Config

STATE = "dpsgd"  # the site's accountant history: {"history": rows of (z, q, steps)}
EPSILON, NOISE, STEPS = "dp-epsilon", "dp-noise-multiplier", "dp-steps"  # reply metrics
NO_GUARANTEE = -1.0  # the dp-epsilon of a site that added no noise (infinite; a metric must be finite)


def epoch_steps(n: int, batch_size: int) -> int:
    """Steps Opacus takes per epoch over n samples: its Poisson sampler (rate 1 / ceil(n / batch_size))
    runs int(1 / rate) batches (one fewer for rounding at some sizes: int(1 / (1 / 93)) = 92), and its
    accountant counts each at rate 1 / that (conservative)."""
    return int(1 / (1 / steps_per_epoch(n, batch_size)))


def noise_for_target(cfg: Config, n_train: int) -> float:
    """z for a site of `n_train` samples: with ``privacy.target_epsilon`` set, the one that spends
    it (at ``privacy.delta``) over rounds x local_epochs epochs (Opacus's binary search, tolerance
    0.01: at most the target, and within 0.01 of it); else (or for a site without samples)
    ``privacy.noise_multiplier``."""
    p = cfg.privacy
    if p.target_epsilon is None or n_train == 0:
        return p.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    per_epoch = epoch_steps(n_train, cfg.batch_size)
    return float(get_noise_multiplier(target_epsilon=p.target_epsilon, target_delta=p.delta, sample_rate=1 / per_epoch,
                                      steps=cfg.rounds * cfg.local_epochs * per_epoch, accountant="rdp"))


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon spent over an accountant history (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta)) if history else 0.0


def history_from(state: dict) -> list[tuple[float, float, int]]:
    rows = state.get(STATE, {}).get("history")
    return [] if rows is None else [(float(z), float(q), int(s)) for z, q, s in rows.tolist()]


def history_state(history: list[tuple[float, float, int]]) -> dict:
    return {STATE: {"history": torch.tensor(history, dtype=torch.float64).reshape(-1, 3)}}


class TrainsAlone(Hook):
    """Marks a DP-SGD site: a hook without a cohort form, so the cohort executor trains the site
    alone through the ClientApp's ``run_job`` (where the client half's ``local_update`` applies)."""


def private_update(model: nn.Module, data, params: TrainParams, noise_multiplier: float,
                   clipping_norm: float, history: list) -> tuple[LocalResult, list]:
    """DP-SGD on the site's train split, on a copy of `model` (Opacus hooks into the model it
    trains; `model` stays hook-free and receives the trained weights). Returns the result (the
    one loop's metrics) and the accountant history extended by this round's steps."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n, device = len(data.train_y), data.train_x.device
    if n == 0:
        return LocalResult({"train_loss": 0.0, "num-steps": 0}, {}, {}, 0), list(history)
    private = copy.deepcopy(model).train()
    for p in private.parameters():
        p.grad = None
    optimizer = torch.optim.SGD(private.parameters(), lr=params.lr, momentum=params.momentum,
                                weight_decay=params.weight_decay)
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=params.batch_size,
                        generator=torch.Generator().manual_seed(params.seed))  # Poisson draws
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded on purpose: reproducible
        engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(history)
    module, optimizer, loader = engine.make_private(
        module=private, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=clipping_norm, poisson_sampling=True,
        noise_generator=torch.Generator(device=device).manual_seed(params.seed + 1))
    noisy = bool((data.noise_scale > 0).any())
    feature_gen = torch.Generator().manual_seed(params.seed + 2)
    loss_sum, seen, steps = torch.zeros((), device=device), 0, 0
    with warnings.catch_warnings():  # the inputs need no gradient: torch says so on every backward
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for x, y in (batch for _ in range(params.epochs) for batch in loader):
            x, y = x.to(device), y.to(device)  # an empty Poisson batch comes on the CPU
            noise = torch.randn(x.shape, generator=feature_gen).to(device) if noisy else None
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(module(add_noise(x, data.noise_scale, noise)), y)
            loss.backward()
            optimizer.step()  # clip per sample, sum, add noise, average, step; the accountant counts it
            if len(y):
                loss_sum += loss.detach() * len(y)
                seen += len(y)
            steps += 1
    model.load_state_dict(private.state_dict())
    metrics = {"train_loss": loss_sum.item() / max(seen, 1), "num-steps": steps}
    return LocalResult(metrics, {}, {}, n), list(engine.accountant.history)


class DpSgdClient(ClientHalf):
    """The site's half: trains with DP-SGD instead of the one loop; keeps its accountant history."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def hooks_last(self, job, inbox: dict) -> list[Hook]:
        return [TrainsAlone()]

    def local_update(self, job):
        p = self.cfg.privacy

        def update(model, data, params, hooks, state) -> LocalResult:
            others = sorted({type(h).__name__ for h in hooks if not isinstance(h, TrainsAlone)})
            if others:
                raise RuntimeError(f"privacy.dp=dpsgd trains without hooks, and {', '.join(others)} would "
                                   f"be ignored: use a strategy whose sites train plain SGD (fedavg, fedadam...)")
            z = noise_for_target(self.cfg, len(data.train_y))
            result, history = private_update(model, data, params, z, p.clipping_norm, history_from(state))
            job.feature_state.update(history_state(history))
            result.state = state  # the strategy's and the other features' state, kept as it was
            spent = epsilon_of(history, p.delta)
            result.metrics.update({EPSILON: spent if math.isfinite(spent) else NO_GUARANTEE, NOISE: z,
                                   STEPS: sum(s for _, _, s in history)})
            return result
        return update


class DpSgdServer(Extension):
    """The server's half: the epsilon each site reports, the largest in every metrics row."""

    TRANSIENT = ("cfg",)  # rebuilt from the run's config on resume; the sites' numbers are checkpointed

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.epsilons: dict[int, float] = {}
        self.noise: dict[int, float] = {}

    def incoming(self, replies: list) -> list:
        for reply in replies:
            if reply.has_error() or "metrics" not in reply.content.metric_records:
                continue
            metrics = reply.content["metrics"]
            if EPSILON in metrics and "site" in metrics:
                site = int(metrics["site"])
                self.epsilons[site], self.noise[site] = float(metrics[EPSILON]), float(metrics[NOISE])
        return replies

    def spent(self) -> dict:
        p = self.cfg.privacy
        sites = {s: (e if e >= 0 else None) for s, e in sorted(self.epsilons.items())}  # None: no noise, no guarantee
        eps = None if None in sites.values() else max(sites.values(), default=0.0)
        return {"epsilon": eps, "delta": p.delta, "sites": sites,
                "noise_multiplier": min(self.noise.values(), default=p.noise_multiplier)}  # the least noise added

    def after_round(self, rnd: int, arrays) -> dict:
        return {"privacy": self.spent()}

    def summary(self) -> dict:
        p = self.cfg.privacy
        return {"privacy": {"dp": "dpsgd", "clipping_norm": p.clipping_norm, "target_epsilon": p.target_epsilon,
                            **self.spent(), "noise_multipliers": dict(sorted(self.noise.items()))}}


FEATURE = Feature("dpsgd", lambda cfg: cfg.privacy.dp == "dpsgd", server=lambda cfg, data: DpSgdServer(cfg),
                  client=DpSgdClient)
