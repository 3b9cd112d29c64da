"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020): normalised averaging.

Client i runs tau_i local steps (sent as the metric "num-steps") of SGD with momentum rho, whose
accumulated step weight is a_i = (tau_i - rho * (1 - rho^tau_i) / (1 - rho)) / (1 - rho)
(= tau_i without momentum). The server averages the normalised updates d_i = (x - y_i) / a_i with
weights p_i = n_i / n and steps x <- x - tau_eff * sum p_i d_i, tau_eff = sum p_i a_i. With
equal tau_i this is FedAvg. BatchNorm statistics are averaged as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from strategies._arrays import KeepsGlobal, is_statistic, metrics_of, to_numpy, to_record

PARAMS: dict = {}
STEPS_KEY = "num-steps"


def step_weight(tau: float, rho: float) -> float:
    """a_i: the sum of the momentum-SGD step weights over tau local steps."""
    if rho == 0.0:
        return tau
    return (tau - rho * (1 - rho ** tau) / (1 - rho)) / (1 - rho)


class FedNova(KeepsGlobal, FedAvg):
    def __init__(self, momentum: float, **common):
        super().__init__(**common)
        self.momentum = momentum

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, _ = self._check_and_log_replies(replies, is_train=True)
        if not replies:
            return None, None
        sizes = [float(metrics_of(m)[self.weighted_by_key]) for m in replies]
        p = [n / sum(sizes) for n in sizes]
        a = [step_weight(float(metrics_of(m)[STEPS_KEY]), self.momentum) for m in replies]
        tau_eff = sum(pi * ai for pi, ai in zip(p, a))
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


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return FedNova(cfg["momentum"], **common)
