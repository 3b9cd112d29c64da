"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020), Algorithm 1, for a local optimiser with heavy-ball momentum rho.

Client (``strategy.correction``): step (default), every SGD step also moves the weights by
-lr (c - c_i), outside the momentum buffer, as the paper's y <- y - lr (g - c_i + c) does at
rho = 0 and as NIID-Bench's code places it; gradient, c - c_i is added to the gradient before
momentum. c_i+ (``strategy.option``): II (default), the momentum-weighted mean gradient of the
run, g_bar = ((x - y_i) / lr - s_i (c - c_i)) / a_i with a_i = step_weight(K_i, rho) and
s_i = K_i (step) or a_i (gradient); I, the gradient at the server model x (one extra pass).
The client sends y_i and delta c_i = c_i+ - c_i; c_i stays in the client's state.
Server (``strategy.weights``): x <- x + eta_g (sum_S p_i y_i - x), c <- c + sum_S q_i delta c_i,
so c = sum_i q_i c_i over all N sites. examples (default): p_i = n_i / sum_S n_j, q_i = n_i / n
(n estimated as N times the sampled mean; exact when all train), SCAFFOLD for FedAvg's objective
sum (n_i / n) f_i; uniform: 1/|S| and 1/N, the paper's (1/N) sum f_i. c's weights set the
objective (the quadratic tests reach either optimum exactly); the y_i's only set the server's
step, and uniform y_i made quantity skew slow (mnist5k quantity seed 0: 0.905 vs 0.943).

Why (issue 14, mnist5k, lr 0.01, rho 0.9, 2 epochs): the correction's push on a site's run is
s_i lr (c - c_i). Through the buffer (gradient) it is a_i ~ K_i / (1 - rho), ~5x the paper's
K_i. At that strength one site's run left the region where c_i+ (the gradient along its last
run) describes f_i near x, and -c_i pushed it uphill round after round: on Dir(0.5) seed 1 its
own loss rose 2 -> 233 and the run hit chance, whether the push went through the buffer or was
spread over the steps (a_i / K_i per step); weighting y_i and c by n_i followed the same path
(that site's n_i was average). At K_i strength (step) no site ran away, on every seed tried.
Trade-off: with momentum the step form cancels only part of the drift when K_i differ (a_i - K_i
of the gradient's push is not offset): on quadratics with 3, 12 and 40 steps it settles 1.39
from the optimum (FedAvg 2.11), where gradient is exact (tests/test_quadratic.py). Without
momentum the two are the same algorithm. Option II is the default: it reports the gradient the
run actually felt, which damps stiff directions; option I (the paper calls it more stable)
diverged in a simulation of directions flat at some sites and stiff at others (curvature >= 10).
Earlier forms: NIID-Bench's (experiments.py, train_net_scaffold) normalised c_i+ by K_i lr,
estimating (a_i / K_i) g, which mixes scales across unequal K_i.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.algorithms.training import Hook, StepTerms, TrainContext, step_weight, with_noise
from fedcls.schema import Config
from strategies import Param
from strategies._arrays import KeepsGlobal, to_numpy, to_record, valid

C_KEY, DELTA_KEY, STATE_KEY = "scaffold.c", "scaffold.delta_c", "scaffold"
OPTION_KEY, PLACE_KEY = "scaffold.option", "scaffold.correction"
OPTIONS, PLACES, WEIGHTS = ("I", "II"), ("step", "gradient"), ("examples", "uniform")
PARAMS = {"server_lr": Param(1.0, "global step size eta_g", minimum=0.0),
          "option": Param("II", "c_i+: II ((x - y_i) / lr less the correction's share, from the local "
                                "run) | I (the site's gradient at the server model, one extra pass)", choices=OPTIONS),
          "correction": Param("step", "where c - c_i enters the local run: step (each step moves the "
                                      "weights by -lr (c - c_i), outside momentum) | gradient (added to "
                                      "the gradient before momentum: exact with unequal step counts, "
                                      "but pushes ~1/(1 - momentum) times harder; diverged on mnist5k)", choices=PLACES),
          "weights": Param("examples", "p_i for the mean of y_i and for c = sum p_i c_i: examples "
                                       "(n_i / n, FedAvg's objective sum p_i f_i) | uniform (the paper's)", choices=WEIGHTS)}


class Scaffold(KeepsGlobal, FedAvg):
    """FedAvg's sampling, plus the server control variate c."""

    def __init__(self, server_lr: float, num_clients: int, option: str = "II",
                 correction: str = "step", weights: str = "examples", **common):
        super().__init__(**common)
        self.server_lr, self.num_clients = server_lr, num_clients
        self.option, self.correction, self.weights = option, correction, weights
        self.c: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[C_KEY] = to_record(self.c)
            message.content["config"][OPTION_KEY] = self.option
            message.content["config"][PLACE_KEY] = self.correction
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = valid(replies)
        if not replies:
            return None, None
        plain = [RecordDict({"arrays": m.content["arrays"], "metrics": m.content["metrics"]})
                 for m in replies]
        p_y, p_c = self.shares(replies)
        models = [to_numpy(m.content["arrays"]) for m in replies]
        mean = {k: sum(p * w[k] for p, w in zip(p_y, models)) for k in models[0]}
        x = self.current
        new = {k: x[k] + self.server_lr * (mean[k] - x[k]) for k in mean}
        for p, m in zip(p_c, replies):
            for key, delta in to_numpy(m.content[DELTA_KEY]).items():
                self.c[key] = self.c.get(key, 0.0) + p * delta
        return to_record(new, like=x), self.train_metrics_aggr_fn(plain, self.weighted_by_key)


    def shares(self, replies: list[Message]) -> tuple[list[float], list[float]]:
        """p_i among the sampled (for the y_i) and over all N sites (for delta c_i): uniform,
        1/|S| and 1/N; examples, n_i / sum_S n_j and n_i / n, n estimated as N times the sampled
        mean (exact when all sites train), so c stays sum_i p_i c_i under partial participation."""
        if self.weights == "uniform":
            return [1 / len(replies)] * len(replies), [1 / self.num_clients] * len(replies)
        n = [float(m.content["metrics"]["num-examples"]) for m in replies]
        total = sum(n) * self.num_clients / len(n)
        return [k / sum(n) for k in n], [k / total for k in n]


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return Scaffold(params["server_lr"], cfg.num_clients, params.get("option", "II"),
                    params.get("correction", "step"), params.get("weights", "examples"), **common)


class ControlVariates(Hook):
    """Applies c - c_i at every step (in the step or in the gradient) and computes c_i+ (option I
    or II) after training."""

    def __init__(self, c: dict[str, torch.Tensor], option: str = "II", place: str = "step"):
        self.c, self.option, self.place = c, option, place

    def before_training(self, ctx: TrainContext) -> None:
        self.ci = ctx.state.get(STATE_KEY, {})
        self.named = list(ctx.model.named_parameters())
        zero = {n: torch.zeros_like(p) for n, p in self.named}
        self.ci = {n: self.ci.get(n, zero[n]).to(p.device) for n, p in self.named}
        self.correction = [(p, self.c.get(n, zero[n]).to(p.device) - self.ci[n]) for n, p in self.named]

    def step_terms(self) -> StepTerms:
        """c - c_i in every step: added to the gradient (place=gradient: g - c_i + c, then momentum)
        or, times lr, subtracted after the step, outside the momentum buffer (place=step)."""
        corrections = {n: corr for (n, _), (_, corr) in zip(self.named, self.correction)}
        if self.place == "gradient":
            return StepTerms(grad_correction=corrections)
        return StepTerms(step_correction=corrections)

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        if ctx.step == 0:  # no data, no step: c_i stays, delta c_i = 0
            new_ci = self.ci
        elif self.option == "I":
            new_ci = gradient_at(ctx, ctx.global_params)
        else:
            new_ci = self.mean_gradient(ctx)
        ctx.state[STATE_KEY] = new_ci
        ctx.outbox[DELTA_KEY] = {n: new_ci[n] - self.ci[n] for n in new_ci}
        return {}

    def mean_gradient(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Option II: x - y_i = lr (a_i g_bar + s_i (c - c_i)), a_i = step_weight(K_i, momentum)
        (= K_i without momentum), s_i = K_i (step) or a_i (gradient); c_i+ = g_bar."""
        a = step_weight(ctx.step, ctx.params.momentum)
        s = float(ctx.step) if self.place == "step" else a
        return {name: (((start - param.detach()) / ctx.params.lr - s * corr) / a).detach()
                for (name, param), start, (_, corr) in zip(self.named, ctx.global_params, self.correction)}


def gradient_at(ctx: TrainContext, weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Option I's c_i+: the gradient of the site's loss over its whole train split at `weights`
    (the server model), in the loop's batch size; the model's weights and buffers are restored."""
    model, data, params = ctx.model, ctx.data, ctx.params
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    named = list(model.named_parameters())
    with torch.no_grad():
        for (_, param), w in zip(named, weights):
            param.copy_(w)
    grads = [torch.zeros_like(p) for _, p in named]
    gen, n = torch.Generator().manual_seed(params.seed), len(data.train_y)
    loss_fn = params.loss_fn or torch.nn.functional.cross_entropy
    with torch.enable_grad():
        for idx in torch.arange(n, device=data.train_x.device).split(params.batch_size):
            out = model(with_noise(data.train_x[idx], data.noise_scale, gen))
            loss = loss_fn(out, data.train_y[idx]) * (len(idx) / n)
            for g, dg in zip(grads, torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)):
                if dg is not None:
                    g.add_(dg)
    model.load_state_dict(saved)
    return {name: g.detach() for (name, _), g in zip(named, grads)}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [ControlVariates(inbox.get(C_KEY, {}), str(config.get(OPTION_KEY, "II")),
                            str(config.get(PLACE_KEY, "step")))]
