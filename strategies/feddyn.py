"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021).

Client k minimises L_k(w) - <g_k, w> + (alpha/2) ||w - w^{t-1}||^2, where g_k (its state, 0 at
first) is then updated g_k <- g_k - alpha (w_k^t - w^{t-1}).
Server: h <- h - alpha * (1/m) * sum over sampled k of (w_k^t - w^{t-1}), with m all clients;
w^t = (1/|P|) sum over sampled k of w_k^t - h / alpha. BatchNorm statistics are averaged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.algorithms.training import Hook, TrainContext
from strategies import Param
from strategies._arrays import KeepsGlobal, is_statistic, to_numpy, to_record

PARAMS = {"alpha": Param(0.01, "weight alpha of the dynamic regulariser", minimum=1e-12)}
ALPHA_KEY, STATE_KEY = "feddyn-alpha", "feddyn"


class FedDyn(KeepsGlobal, FedAvg):
    def __init__(self, alpha: float, num_clients: int, **common):
        super().__init__(**common)
        self.alpha, self.num_clients = alpha, num_clients
        self.h: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[ALPHA_KEY] = self.alpha
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not replies:
            return None, None
        x, models = self.current, [to_numpy(m.content["arrays"]) for m in replies]
        new = {}
        for key in x:
            mean = sum(w[key] for w in models) / len(models)
            if is_statistic(key):
                new[key] = mean
                continue
            drift = sum(w[key] - x[key] for w in models)
            self.h[key] = self.h.get(key, 0.0) - self.alpha * drift / self.num_clients
            new[key] = mean - self.h[key] / self.alpha
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        return to_record(new, like=x), metrics


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return FedDyn(params["alpha"], cfg["num_clients"], **common)


class DynamicRegularizer(Hook):
    """-<g_k, w> + (alpha/2) ||w - w_global||^2, and g_k's update after training."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def before_training(self, ctx: TrainContext) -> None:
        saved = ctx.state.get(STATE_KEY, {})
        self.named = list(ctx.model.named_parameters())
        self.g = [saved.get(n, torch.zeros_like(p)).to(p.device) for n, p in self.named]

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor:
        linear = sum((g * p).sum() for g, (_, p) in zip(self.g, self.named))
        prox = sum(((p - w0) ** 2).sum() for (_, p), w0 in zip(self.named, ctx.global_params))
        return -linear + 0.5 * self.alpha * prox

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        ctx.state[STATE_KEY] = {n: (g - self.alpha * (p.detach() - w0)).detach()
                                for g, (n, p), w0 in zip(self.g, self.named, ctx.global_params)}
        return {}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [DynamicRegularizer(float(config[ALPHA_KEY]))]
