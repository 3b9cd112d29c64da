"""FedDyn (Acar et al. 2021) by behaviour: the real local loop (fedcls.algorithms.training.local_update)
with FedDyn's client hook and FedDyn's server half on real Flower Messages (the pattern and helpers
of tests/test_quadratic.py), on objectives whose answers are known in closed form."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

import strategies
from fedcls.algorithms.training import TrainParams, local_update
from fedcls.schema import Config
from strategies import feddyn
from strategy_helpers import identity
from test_quadratic import COMMON, Nodes, Point, federate, fixed_point, optimum, site, train_site

G = np.array([0.3, 0.4])  # the constant gradient of a linear loss <G, w>: no minimiser


@pytest.mark.parametrize("momentum,lr,rounds", [(0.0, 0.1, 30), (0.9, 0.03, 40)])
def test_feddyn_reaches_the_global_optimum_where_fedavg_drifts(momentum, lr, rounds, monkeypatch):
    """Acar et al. 2021, sec. 3: at FedDyn's fixed point every local run ends where it starts, so
    g_k = grad f_k(w) and h = mean g_k = 0: w = argmin (1/m) sum f_k, whatever the sites' local
    steps (3, 12, 40) and momentum. FedAvg's fixed point (closed form) is > 0.5 away from it."""
    identity(monkeypatch)
    steps = [3, 12, 40]
    target = optimum([1, 1, 1])
    assert np.linalg.norm(fixed_point(steps, steps, lr, momentum) - target) > 0.5
    assert np.linalg.norm(federate("feddyn", steps, lr, momentum, rounds, alpha=2.0) - target) < 1e-6


def linear_rounds(rounds: int, alpha: float, lr: float, steps: int) -> list[np.ndarray]:
    """The global point after each round of FedDyn (3 identical sites, no momentum, full
    participation) on the linear loss <G, w>."""
    module = strategies.get("feddyn")
    strategy = module.build_server({"alpha": alpha, "max_grad_norm": 10.0}, COMMON, Config(num_clients=3))
    arrays, states, points = ArrayRecord(Point().state_dict()), [{}, {}, {}], []
    loss = lambda out, _targets: (out * torch.tensor(G)).sum(1).mean()  # noqa: E731
    for rnd in range(1, rounds + 1):
        replies = [train_site(msg, module, TrainParams(1, 1, lr, seed=i, loss_fn=loss), steps, states[i])
                   for i, msg in enumerate(strategy.configure_train(rnd, arrays, ConfigRecord(), Nodes()))]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        points.append(arrays.to_torch_state_dict()["w"].numpy())
    return points


def test_feddyn_server_moves_gradient_over_alpha_per_round_without_a_minimiser(monkeypatch):
    """The mechanism behind issue 14's divergence, by hand. On <G, w> a local run of K steps
    moves d_t = -(G - g) c / alpha with c = 1 - (1 - lr alpha)^K, g_t = G (1 - (1 - c)^t), and the
    server w_t - w_{t-1} = d_t - g_t / alpha = -(G/alpha) (1 - (1 - c)^(t-1) (1 - 2c)) -> -G/alpha:
    1/c ~ 1/(alpha lr K) times FedAvg's -lr K G. Cross-entropy on separable data without weight
    decay has such a direction (the logits' scale), so a small alpha runs away along it."""
    identity(monkeypatch)
    alpha, lr, steps = 0.1, 0.1, 5
    c = 1 - (1 - lr * alpha) ** steps
    points = linear_rounds(20, alpha, lr, steps)
    for t in (1, 2, 20):
        move = points[t - 1] - (points[t - 2] if t > 1 else 0.0)
        expected = -(G / alpha) * (1 - (1 - c) ** (t - 1) * (1 - 2 * c))
        np.testing.assert_allclose(move, expected, rtol=1e-9)
    fedavg_move = lr * steps * np.linalg.norm(G)
    assert np.linalg.norm(points[-1] - points[-2]) > 12 * fedavg_move  # 13.1x, -> 1/c = 20.4x


@pytest.mark.parametrize("max_grad_norm,expected", [(10.0, [-0.6, -0.8]), (0.0, [-3.0, -4.0])])
def test_feddyn_clips_the_local_gradient_by_hand(max_grad_norm, expected):
    """The authors' code clips each step's gradient to norm 10 (torch's clip_grad_norm_): a
    gradient (30, 40) (norm 50) steps as (6, 8) at lr 0.1; max_grad_norm 0 leaves it alone.
    g_k <- g_k - alpha (w - w0) then holds the clipped move."""
    model, alpha = Point(), 0.5
    loss = lambda out, _targets: (out * torch.tensor([30.0, 40.0], dtype=torch.float64)).sum(1).mean()  # noqa: E731
    hook = feddyn.DynamicRegularizer(alpha, max_grad_norm)
    result = local_update(model, site(1), TrainParams(1, 1, 0.1, loss_fn=loss), [hook], {})
    # rtol: torch scales by max_norm / (norm + 1e-6)
    np.testing.assert_allclose(model.w.detach().numpy(), expected, rtol=1e-7)
    np.testing.assert_allclose(result.state[feddyn.STATE_KEY]["w"].numpy(), -alpha * np.array(expected), rtol=1e-7)


def test_feddyn_defaults_and_config_reach_the_client(monkeypatch):
    """alpha 0.1 (the paper's grid; 0.01 diverged on mnist5k, issue 14) and the authors' clip 10
    are the defaults, and both travel to the clients in the round's config."""
    identity(monkeypatch)
    assert feddyn.PARAMS["alpha"].default == 0.1 and feddyn.PARAMS["max_grad_norm"].default == 10.0
    strategy = feddyn.FedDyn(alpha=0.3, num_clients=3, max_grad_norm=2.5, **COMMON)
    (msg, *_) = strategy.configure_train(1, ArrayRecord(Point().state_dict()), ConfigRecord(), Nodes())
    (hook,) = feddyn.client_hooks(msg.content["config"], {})
    assert (hook.alpha, hook.max_grad_norm) == (0.3, 2.5)
