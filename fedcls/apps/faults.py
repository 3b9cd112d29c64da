"""Injected faults for robustness studies, and the server's defences (``faults`` config section).

Each sampled client's fault in a training round is drawn from (seed, round, site) alone, so a
run's faults are reproducible and a test can recompute them: ``drop`` (the server never hears
from it: its message is not delivered), ``crash`` (the ClientApp raises), ``nan`` (it returns
non-finite weights) or ``straggler`` (its reply reaches the server ``straggler_delay`` s late;
with a ``round_timeout`` the server stops waiting at the deadline and counts it late). The server rejects non-finite
updates (with every other invalid reply: fedcls.apps.screening), aggregates the rest, and stops the run (resumable from its checkpoint) when fewer than
``min_train_nodes`` usable replies arrive. Each round's metrics.jsonl row lists the sites that
failed, by reason, under ``faults``. Faults apply to training messages only.

A Byzantine site (``byzantine_site``) answers every training round with a malicious reply
(``byzantine_attack``, or each of fedcls.schema.BYZANTINE_ATTACKS in turn: ``malicious``): the attacks of issue 16 that the server's
screening (fedcls.apps.screening) must refuse, naming the site, while the honest sites go on.

A straggler's delay is added on the way back (the server waits for it in real time, up to the
deadline) rather than slept inside the client: in a simulation, clients share actors, and a
sleeping actor would hold up every client queued behind it, which a real slow site does not.
Replies that really miss ``round_timeout`` (a slow deployed site) are counted late as well.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from flwr.app import Message

from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.schema import BYZANTINE_ATTACKS, Config

KINDS = ("drop", "crash", "nan", "straggler")


class InjectedCrash(RuntimeError):
    """The ClientApp's injected crash (faults.crash_prob)."""


class TooFewReplies(RuntimeError):
    """Fewer usable training replies than faults.min_train_nodes."""


def fault_of(cfg: Config, rnd: int, site: int) -> str | None:
    """The fault injected into `site`'s training in round `rnd` (None: none)."""
    f = cfg.faults
    probs = [f.drop_prob, f.crash_prob, f.nan_prob, f.straggler_prob]
    if not any(probs):
        return None
    u = np.random.default_rng([cfg.seed, rnd, site, 0xFA17]).random()
    for kind, edge in zip(KINDS, np.cumsum(probs)):
        if u < edge:
            return kind
    return None


def client_side(cfg: Config, rnd: int, site: int) -> str | None:
    """Act out a client's fault before it trains (a crash raises); returns the fault."""
    fault = fault_of(cfg, rnd, site)
    if fault == "crash":
        raise InjectedCrash(f"injected crash (faults.crash_prob) at site {site}, round {rnd}")
    return fault


def poisoned(weights: dict) -> dict:
    """The weights a client with an injected NaN fault returns."""
    return {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in weights.items()}


def outgoing(cfg: Config, rnd: int, messages: list[Message], site_of_node: dict[int, int]):
    """(messages to send, dropped sites): the dropped clients' messages are never delivered."""
    sites = [site_of_node.get(m.metadata.dst_node_id, -1) for m in messages]
    drop = [fault_of(cfg, rnd, s) == "drop" for s in sites]
    return [m for m, d in zip(messages, drop) if not d], sorted(s for s, d in zip(sites, drop) if d)


def delay_stragglers(cfg: Config, rnd: int, replies: list[Message], site_of_node: dict[int, int],
                     sent_at: float) -> list[Message]:
    """Replies as they would arrive with the stragglers' delay: wait for the late ones up to the
    round's deadline; those that would arrive after it are left out (and counted late)."""
    f = cfg.faults
    slow = [m for m in replies if fault_of(cfg, rnd, site_of_node.get(m.metadata.src_node_id, -1)) == "straggler"]
    if not slow:
        return replies
    arrives = time.perf_counter() + f.straggler_delay  # every straggler: the same delay
    deadline = sent_at + f.round_timeout if f.round_timeout else math.inf
    time.sleep(max(min(arrives, deadline) - time.perf_counter(), 0.0))
    if arrives <= deadline:
        return replies
    slow_ids = {id(m) for m in slow}
    return [m for m in replies if id(m) not in slow_ids]


STEP_WORDS = {"eta", "lr", "learning", "momentum", "mu", "alpha"}  # strategy parameters that set step sizes


def divergence_hint(cfg: Config, usable: int, failed: dict) -> str:
    """When every reply that arrived was non-finite (local training diverged, not a lost site):
    the settings to lower -- lr, EWC's lambda and cap, the strategy's step sizes and weights."""
    if usable or not failed.get("non_finite"):
        return ""
    hint = (f" Every update that arrived was non-finite: local training diverged. Lower lr (now "
            f"{cfg.lr}) or momentum (now {cfg.momentum})")
    c = cfg.continual
    if c.kind != "none" and "ewc" in c.method:
        hint += (f"; EWC's penalty is stable only while lr*ewc_lambda*F_j < 1+momentum, and "
                 f"continual.ewc_cap=0 leaves it uncapped: set continual.ewc_cap=0.5 or lower "
                 f"continual.ewc_lambda (now {c.ewc_lambda})" if not c.ewc_cap else
                 f"; or continual.ewc_lambda (now {c.ewc_lambda}; its penalty is already capped at "
                 f"continual.ewc_cap={c.ewc_cap} of its stability bound)")
    steps = [f"strategy.{k} (now {v})" for k, v in cfg.strategy.params.items() if STEP_WORDS & set(k.split("_"))]
    if cfg.coral.enabled:
        steps.append(f"coral.lambda (now {cfg.coral.lambda_})")
    hint += f"; or {', '.join(steps)}" if steps else ""
    injected = " (faults.nan_prob also injects non-finite updates)" if cfg.faults.nan_prob else ""
    return hint + "." + injected


def attack_of(cfg: Config, rnd: int, site: int) -> str | None:
    """The attack `site` sends in round `rnd` (None: it is honest)."""
    f = cfg.faults
    if site != f.byzantine_site:
        return None
    return BYZANTINE_ATTACKS[(rnd - 1) % len(BYZANTINE_ATTACKS)] if f.byzantine_attack == "cycle" else f.byzantine_attack


def _floats(weights: dict, make) -> dict:
    return {k: make(v) if v.is_floating_point() else v for k, v in weights.items()}


def malicious(attack: str, weights: dict, metrics: dict, sent: dict, num_clients: int) -> tuple[dict, dict]:
    """(weights, metrics) of a Byzantine reply; `weights` the honest ones, `sent` the global ones."""
    first = next(k for k, v in weights.items() if v.is_floating_point())
    if attack == "huge_count":  # random weights that would own any example-weighted mean
        return _floats(weights, torch.randn_like), {**metrics, "num-examples": 10**12}
    if attack == "negative_count":
        return weights, {**metrics, "num-examples": -2000}
    if attack == "tiny_shape":  # arrays numpy would broadcast into the mean
        return _floats(weights, lambda v: torch.zeros(1, dtype=v.dtype)), metrics
    if attack == "wrong_shape":
        return {**weights, first: torch.zeros(3, 3)}, metrics
    if attack == "extra_key":
        return {**weights, "backdoor.weight": torch.zeros(2)}, metrics
    if attack == "missing_key":
        return {k: v for k, v in weights.items() if k != first}, metrics
    if attack == "huge_weights":  # finite, but the mean's loss overflows
        return _floats(weights, lambda v: torch.full_like(v, 1e30)), metrics
    if attack == "boosted":  # model replacement: the update scaled to outweigh everyone else's
        return {k: sent[k] + 1000 * (v - sent[k]) if v.is_floating_point() else v for k, v in weights.items()}, metrics
    if attack == "bad_metric":
        return weights, {**metrics, "train_loss": math.inf}
    if attack == "impostor":  # claims to be another site
        return weights, {**metrics, "site": float((metrics["site"] + 1) % num_clients)}
    raise ValueError(f"unknown attack {attack!r}: one of {', '.join(BYZANTINE_ATTACKS)}")


class FaultInjection(ClientHalf):
    """The client half of fault injection: a crash raises before training, a NaN fault poisons
    the weights sent, a Byzantine site sends its attack (drops and stragglers are acted out by
    the server half, FaultDelivery)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def before_train(self, rnd: int, site: int) -> None:
        client_side(self.cfg, rnd, site)

    def outgoing(self, job, weights: dict, metrics: dict) -> tuple[dict, dict]:
        if fault_of(self.cfg, job.round, job.site) == "nan":
            return poisoned(weights), metrics
        if attack := attack_of(self.cfg, job.round, job.site):
            sent = job.msg.content["arrays"].to_torch_state_dict()
            return malicious(attack, weights, metrics, sent, self.cfg.num_clients)
        return weights, metrics


class FaultDelivery(Extension):
    """The server half of fault injection: a dropped client's message is never delivered, a
    straggler's reply arrives faults.straggler_delay seconds late (left out past the deadline)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def withhold(self, rnd: int, messages: list, site_of_node: dict[int, int]) -> tuple[list, list[int]]:
        return outgoing(self.cfg, rnd, messages, site_of_node)

    def arrived(self, rnd: int, replies: list, site_of_node: dict[int, int], sent_at: float) -> list:
        return delay_stragglers(self.cfg, rnd, replies, site_of_node, sent_at)


FEATURE = Feature("faults", lambda cfg: any(cfg.faults.probabilities().values()) or cfg.faults.byzantine_site >= 0,
                  server=lambda cfg, data: FaultDelivery(cfg), client=FaultInjection)
