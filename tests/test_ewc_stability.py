"""EWC's stability bound (fedcls.algorithms.continual.ewc) on a 1-D quadratic, through the real loop and
Avalanche's EWCPlugin: a weight `w` the cross-entropy never sees, so only the penalty
lambda * F * (w - w*)^2 moves it (curvature 2 lambda F). SGD with momentum rho is stable on it iff
lr * lambda * F < 1 + rho; the numbers below are the hand-computed iterates of that recurrence."""

import warnings

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from flwr.app import Message, MetricRecord, RecordDict
from torch import nn

from fedcls.algorithms.continual.client import continual_hooks
from fedcls.algorithms.continual.ewc import CAPPED, FEDERATED, RATIO, EWCStabilityWarning
from fedcls.algorithms.continual.server import ContinualServer
from fedcls.algorithms.continual.streams import SiteStream
from fedcls.algorithms.training import TrainParams, local_update
from fedcls.apps import faults
from fedcls.config import compose
from fedcls.data.federated import SiteTensors, federated_data
from fedcls.errors import ConfigError
from strategy_helpers import identity

N, BATCH, LR = 20, 2, 0.1  # 10 steps per epoch


class Quadratic(nn.Module):
    """A linear classifier plus one weight `w` outside the forward pass."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.head(x.flatten(1))


def _stream() -> SiteStream:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 1, 2, 2, generator=gen), torch.arange(N) % 2
    tensors = SiteTensors(x, y, x[:4], y[:4], torch.zeros(1))
    sets = [tensor_dataset(x, y, task_labels=0) for _ in range(2)]
    return SiteStream([tensors, tensors], benchmark_from_datasets(train=sets, test=sets))


def penalised_run(F: float, momentum: float, epochs: int, cap: float = 0.0, mode: str = "separate"):
    """w after `epochs` epochs on experience 1 from w - w* = 1 (w* = 0) with importance F;
    and the round's metrics. Rounds: experience 0; experience 1 (EWC anchors w* = 0, receives
    the federation's importances); experience 1 again from w = 1."""
    cfg = compose(["scenario=continual_classes", "dataset=synthetic", "continual.method=ewc",
                   "continual.ewc_lambda=1", f"continual.ewc_cap={cap}",
                   "continual.aggregate_importances=true", f"continual.ewc_mode={mode}"])
    torch.manual_seed(0)
    model, stream, state = Quadratic(), _stream(), {}
    inbox = {f"{FEDERATED}0": {"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2),
                               "w": torch.tensor([F])}}
    for exp, w0, n_epochs in ((0, 0.0, 1), (1, 0.0, 1), (1, 1.0, epochs)):
        with torch.no_grad():
            model.w.fill_(w0)
        hooks = continual_hooks(cfg, stream, exp, state, inbox)
        result = local_update(model, stream.tensors[exp], TrainParams(n_epochs, BATCH, LR, momentum),
                              hooks, state)
        state = result.state
    return model.w.item(), result.metrics


def heavy_ball(h: float, momentum: float, steps: int) -> float:
    """Torch's SGD on 0.5 * h * w^2 from w = 1, by hand: v = rho v + h w; w -= lr v."""
    w, v = 1.0, 0.0
    for _ in range(steps):
        v = momentum * v + h * w
        w -= LR * v
    return w


@pytest.mark.parametrize("ratio, momentum, epochs", [
    (0.9, 0.0, 3),   # lr*lambda*F = 0.9 < 1: w = (1 - 1.8)^30 = 1.2e-3
    (1.1, 0.0, 3),   # 1.1 > 1: w = (1 - 2.2)^30 = 237 (stable under a lambda/2 penalty, not Avalanche's)
    (1.8, 0.9, 20),  # 1.8 < 1.9: roots of z^2 + 1.7 z + 0.9, |z| = 0.949
    (2.0, 0.9, 10),  # 2.0 > 1.9: roots -1.5 and -0.6
])
def test_penalty_is_stable_iff_lr_lambda_F_below_one_plus_momentum(ratio, momentum, epochs):
    F = ratio / LR  # lambda = 1
    w, metrics = penalised_run(F, momentum, epochs)
    steps = epochs * N // BATCH
    assert w == pytest.approx(heavy_ball(2 * F, momentum, steps), rel=1e-4)
    if momentum == 0.0:
        assert w == pytest.approx((1 - 2 * ratio) ** steps, rel=1e-4)
    stable = ratio < 1 + momentum
    assert (abs(w) < 0.01) if stable else (abs(w) > 10)
    assert metrics[RATIO] == pytest.approx(ratio / (1 + momentum), rel=1e-6)
    assert metrics[CAPPED] == 0.0  # ewc_cap=0: Avalanche's penalty as it is


def test_cap_keeps_the_penalty_under_the_bound():
    # lr*lambda*F = 5 > 1: capped to F = 0.5 * 1 / (0.1 * 1) = 5, lr * h = 1: w* in one step
    w, metrics = penalised_run(50.0, 0.0, 1, cap=0.5)
    assert w == pytest.approx(0.0, abs=1e-7)
    assert metrics[RATIO] == pytest.approx(5.0) and metrics[CAPPED] == pytest.approx(1 / 11)  # w of 11 weights
    # momentum 0.9: 20x over the bound; capped to lr * lambda * F = 0.5 * 1.9, lr * h = 1.9
    w, metrics = penalised_run(20 * 1.9 / LR, 0.9, 10, cap=0.5)
    assert w == pytest.approx(heavy_ball(2 * 0.5 * 1.9 / LR, 0.9, 100), rel=1e-4, abs=1e-7)
    assert abs(w) < 0.01 and metrics[RATIO] == pytest.approx(20.0)
    assert penalised_run(50.0, 0.0, 1, cap=0.5, mode="online")[0] == pytest.approx(0.0, abs=1e-7)
    # below the cap nothing changes: lr*lambda*F = 0.4 < 0.5
    assert penalised_run(4.0, 0.0, 1, cap=0.5)[0] == pytest.approx(0.2 ** 10, rel=1e-4)


def _reply(site: int, ratio: float, capped: float) -> Message:
    metrics = MetricRecord({"num-examples": 5, "site": float(site), RATIO: ratio, CAPPED: capped})
    return Message(RecordDict({"metrics": metrics}), dst_node_id=site + 1, message_type="train")


@pytest.mark.parametrize("cap, words", [
    ("0.5", ["capped at continual.ewc_cap=0.5", "lower lr (now 0.05) below 0.00625"]),
    ("0", ["will diverge", "continual.ewc_lambda (now 100.0) below 25", "lr (now 0.05) below 0.0125"]),
])
def test_server_warns_once_naming_the_bound_and_the_settings(monkeypatch, cap, words):
    identity(monkeypatch)
    cfg = compose(["scenario=continual_classes", "dataset=synthetic", "data.synthetic.num_samples=600",
                   "num_clients=3", f"continual.ewc_cap={cap}"])
    server = ContinualServer(cfg, federated_data(cfg))
    server.incoming([_reply(0, 0.5, 0.0), _reply(1, 0.9, 0.0)])  # below the bound: silent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server.incoming([_reply(0, 2.0, 0.0), _reply(2, 4.0, 0.01)])
        server.incoming([_reply(1, 8.0, 0.02)])  # once per run
    caught = [w for w in caught if issubclass(w.category, EWCStabilityWarning)]
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "sites [0, 2]" in text and "= 7.6 reached the stability bound 1+momentum = 1.9" in text
    assert all(w in text for w in words), text
    assert server.summary()["ewc_stability_max"] == 8.0


def test_all_non_finite_updates_name_the_settings_to_lower():
    cfg = compose(["scenario=continual_classes", "dataset=synthetic", "strategy=fedadam"])
    failed = {"dropped": [], "late": [], "crashed": [], "non_finite": [0, 1]}
    hint = faults.divergence_hint(cfg, 0, failed)
    for words in ("lr (now 0.05)", "momentum (now 0.9)", "continual.ewc_lambda (now 100.0;",
                  "continual.ewc_cap=0.5 of its stability bound", "strategy.eta (now"):
        assert words in hint, hint
    assert "beta_1" not in hint and "tau" not in hint
    prox = compose(["scenario=continual_domains", "dataset=synthetic", "strategy=fedprox"])
    assert "strategy.proximal_mu (now" in faults.divergence_hint(prox, 0, failed)
    uncapped = compose(["scenario=continual_classes", "dataset=synthetic", "continual.ewc_cap=0"])
    assert "ewc_cap=0 leaves it uncapped: set continual.ewc_cap=0.5" in faults.divergence_hint(uncapped, 0, failed)
    assert faults.divergence_hint(cfg, 1, failed) == ""  # some site still answered
    assert faults.divergence_hint(cfg, 0, {**failed, "non_finite": [], "crashed": [0]}) == ""
    plain = compose(["dataset=synthetic"])
    assert "ewc" not in faults.divergence_hint(plain, 0, failed)


@pytest.mark.parametrize("cap", ["1", "-0.1"])
def test_ewc_cap_outside_zero_one_is_refused(cap):
    with pytest.raises(ConfigError, match=r"ewc_cap must be in \[0, 1\)"):
        compose(["scenario=continual_classes", "dataset=synthetic", f"continual.ewc_cap={cap}"])
