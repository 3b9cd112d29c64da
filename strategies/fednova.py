"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020): normalised averaging.

Client i runs tau_i local steps (sent as the metric "num-steps") of SGD with momentum rho, whose
accumulated step weight is a_i = (tau_i - rho * (1 - rho^tau_i) / (1 - rho)) / (1 - rho)
(= tau_i without momentum; fedcls.algorithms.training.step_weight). The server averages the normalised
updates d_i = (x - y_i) / a_i with weights p_i = n_i / n and steps x <- x - tau_eff * sum p_i d_i.
The weights p_i fix the direction, hence the objective sum p_i f_i; tau_eff only sets how far the
server moves along it (the paper's general update, its eq. (4) and Fig. 3). With equal tau_i this
is FedAvg. BatchNorm statistics are averaged as they are.

tau_eff (``strategy.tau_eff``): ``harmonic`` (default), 1 / sum (p_i / a_i); or ``mean``,
sum p_i a_i, the paper's and NIID-Bench's choice. ``mean`` diverged under quantity skew (mnist5k:
51 +- 29 against FedAvg's 94.5): d_i = (x - y_i) / a_i stands for lr times a gradient only while a
site's run is in its linear regime. In every direction where local runs saturate (curvature L with
lr * L >~ 0.1 under momentum 0.9, where a site of 50 steps has a_i = 410) x - y_i stops growing with
a_i, and ``mean`` moves the server by sum p_i a_i * sum p_i / a_i times a convex combination of
the local moves: 6-10x for step counts of 2 to 50, an iteration that diverges (spectral radius
2-10 on such quadratics, tests/test_quadratic.py). ``harmonic`` makes that factor exactly 1 (the
saturated directions move by a convex combination of the local moves, as FedAvg's do), keeps the
same direction and fixed point, and costs speed in the flat directions, where it moves like
sites of a_i = tau_eff steps: the price of weighting a big site by p_i rather than p_i a_i.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.algorithms.training import step_weight
from fedcls.schema import Config
from strategies import Param
from strategies._arrays import (
    KeepsGlobal,
    is_statistic,
    metrics_of,
    to_numpy,
    to_record,
)

TAU_EFF = ("harmonic", "mean")
PARAMS = {"tau_eff": Param("harmonic", "server step tau_eff: harmonic (1 / sum p_i/a_i, stable) | "
                                       "mean (sum p_i a_i, the paper's; diverges when local runs saturate)",
                           choices=TAU_EFF)}
STEPS_KEY = "num-steps"


def effective_steps(p: list[float], a: list[float], kind: str) -> float:
    """tau_eff from the weights p_i and the step weights a_i (see the module docstring)."""
    if kind == "mean":
        return sum(pi * ai for pi, ai in zip(p, a))
    return 1.0 / sum(pi / ai for pi, ai in zip(p, a))


class FedNova(KeepsGlobal, FedAvg):
    def __init__(self, momentum: float, tau_eff: str = "harmonic", **common):
        super().__init__(**common)
        self.momentum, self.tau_eff = momentum, tau_eff

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, _ = self._check_and_log_replies(replies, is_train=True)
        # a site that took no step has no update to normalise (a_i = 0)
        replies = [m for m in replies if float(metrics_of(m)[STEPS_KEY]) > 0]
        if not replies:
            return None, None
        sizes = [float(metrics_of(m)[self.weighted_by_key]) for m in replies]
        p = [n / sum(sizes) for n in sizes]
        a = [step_weight(float(metrics_of(m)[STEPS_KEY]), self.momentum) for m in replies]
        tau_eff = effective_steps(p, a, self.tau_eff)
        x, locals_ = self.current, [to_numpy(m.content["arrays"]) for m in replies]
        new = {}
        for key in x:
            if is_statistic(key):
                new[key] = sum(pi * y[key] for pi, y in zip(p, locals_))
            else:
                d = sum(pi * (x[key] - y[key]) / ai for pi, ai, y in zip(p, a, locals_))
                new[key] = x[key] - tau_eff * d
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        return to_record(new, like=x), metrics


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedNova(cfg.momentum, params["tau_eff"], **common)
