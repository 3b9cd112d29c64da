"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020), option II.

Client: every step moves by -lr * (g_i(y) - c_i + c) (the correction applied to the weights after
the optimiser step, as in NIID-Bench's code, so momentum does not amplify it); afterwards c_i+ = c_i - c + (x - y_i) / (K * lr),
with K local steps, and sends y_i plus delta c_i = c_i+ - c_i. c_i stays in the client's state.
Server: x <- x + eta_g * (mean of y_i - x), the plain mean over sampled clients as in the paper
(example weights would stop the corrections c - c_i cancelling); c <- c + (1/N) * sum over i of
delta c_i, i.e. |S|/N times their mean, which is right under partial participation.
c and delta c_i travel as their own named ArrayRecords ("scaffold.c", "scaffold.delta_c").
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.training import Hook, TrainContext
from strategies import Param
from strategies._arrays import KeepsGlobal, to_numpy, to_record, valid

C_KEY, DELTA_KEY, STATE_KEY = "scaffold.c", "scaffold.delta_c", "scaffold"
PARAMS = {"server_lr": Param(1.0, "global step size eta_g", minimum=0.0)}


class Scaffold(KeepsGlobal, FedAvg):
    """FedAvg's sampling, plus the server control variate c."""

    def __init__(self, server_lr: float, num_clients: int, **common):
        super().__init__(**common)
        self.server_lr, self.num_clients = server_lr, num_clients
        self.c: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[C_KEY] = to_record(self.c)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = valid(replies)
        if not replies:
            return None, None
        plain = [RecordDict({"arrays": m.content["arrays"], "metrics": m.content["metrics"]})
                 for m in replies]
        # uniform mean, as in the paper: with example weights the corrections c - c_i no longer
        # cancel across clients (c is their uniform mean) and the global model drifts
        models = [to_numpy(m.content["arrays"]) for m in replies]
        mean = {k: sum(w[k] for w in models) / len(models) for k in models[0]}
        x = self.current
        new = {k: x[k] + self.server_lr * (mean[k] - x[k]) for k in mean}
        for m in replies:
            for key, delta in to_numpy(m.content[DELTA_KEY]).items():
                self.c[key] = self.c.get(key, 0.0) + delta / self.num_clients
        return to_record(new, like=x), self.train_metrics_aggr_fn(plain, self.weighted_by_key)


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return Scaffold(params["server_lr"], cfg["num_clients"], **common)


class ControlVariates(Hook):
    """Corrects each step by c - c_i and computes c_i+ (option II) after training."""

    def __init__(self, c: dict[str, torch.Tensor]):
        self.c = c

    def before_training(self, ctx: TrainContext) -> None:
        self.ci = ctx.state.get(STATE_KEY, {})
        self.named = list(ctx.model.named_parameters())
        zero = {n: torch.zeros_like(p) for n, p in self.named}
        self.ci = {n: self.ci.get(n, zero[n]).to(p.device) for n, p in self.named}
        self.correction = [(p, self.c.get(n, zero[n]).to(p.device) - self.ci[n]) for n, p in self.named]

    @torch.no_grad()
    def after_step(self, ctx: TrainContext) -> None:
        # y <- y - lr * (c - c_i), applied to the weights after the optimiser's step on g_i(y):
        # with plain SGD this is the paper's y - lr * (g_i(y) - c_i + c); with momentum it keeps
        # the correction out of the momentum buffer, as NIID-Bench's implementation does (fed
        # through the gradient, momentum amplifies a c_i that already carries momentum's 1/(1-rho)
        # and the run diverges)
        for param, correction in self.correction:
            param.sub_(ctx.params.lr * correction)

    def cohort_terms(self) -> dict:
        return {"step_correction": {n: corr for (n, _), (_, corr) in zip(self.named, self.correction)}}

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        scale = 1.0 / (max(ctx.step, 1) * ctx.params.lr)
        new_ci, delta = {}, {}
        for (name, param), start in zip(self.named, ctx.global_params):
            c = self.c.get(name, torch.zeros_like(param)).to(param.device)
            new_ci[name] = (self.ci[name] - c + (start - param.detach()) * scale).detach()
            delta[name] = new_ci[name] - self.ci[name]
        ctx.state[STATE_KEY] = new_ci
        ctx.outbox[DELTA_KEY] = delta
        return {}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [ControlVariates(inbox.get(C_KEY, {}))]
