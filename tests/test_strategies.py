"""Each strategy's server aggregation and client update on small hand-computed tensors."""

import math
import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

import strategies
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import TrainContext, TrainParams, local_update
from fedcls.apps.federation import build_strategy
from fedcls.config import compose
from fedcls.data.federated import SiteTensors
from fedcls.errors import ConfigError
from strategies import fedbn, feddyn, fednova, moon, qfedavg, scaffold
from strategy_helpers import identity, record, train_reply


class Nodes:
    def __init__(self, n):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def arrays(rec: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in rec.items()}


def one_sample_site(x, label):
    xs = torch.tensor(x, dtype=torch.float32).view(1, 1, 1, -1)
    return SiteTensors(xs, torch.tensor([label]), xs[:0], torch.zeros(0, dtype=torch.long), torch.zeros(1))


# ---------------------------------------------------------------- SCAFFOLD

def test_scaffold_server_c_is_mean_of_client_c_plus_after_one_full_round(monkeypatch):
    identity(monkeypatch)
    strategy = scaffold.Scaffold(server_lr=1.0, num_clients=2, min_available_nodes=2)
    (msg, *_) = strategy.configure_train(1, record(w=[0, 0]), ConfigRecord(), Nodes(2))
    assert len(msg.content[scaffold.C_KEY]) == 0  # c starts at 0
    new, _ = strategy.aggregate_train(1, [
        train_reply({"w": [1, 2]}, 1, {scaffold.DELTA_KEY: {"w": [1, 1]}}),
        train_reply({"w": [3, 4]}, 1, {scaffold.DELTA_KEY: {"w": [3, 5]}})])
    assert arrays(new)["w"].tolist() == [2, 3]
    assert strategy.c["w"].tolist() == [2, 3]  # c_i = 0, so delta c_i = c_i+: c = mean c_i+
    (msg, *_) = strategy.configure_train(2, new, ConfigRecord(), Nodes(2))
    assert arrays(msg.content[scaffold.C_KEY])["w"].tolist() == [2, 3]


def test_scaffold_partial_participation_scales_by_sampled_over_all(monkeypatch):
    identity(monkeypatch)
    strategy = scaffold.Scaffold(server_lr=0.5, num_clients=4, min_available_nodes=4)
    strategy.configure_train(1, record(w=[0, 0]), ConfigRecord(), Nodes(4))
    new, _ = strategy.aggregate_train(1, [
        train_reply({"w": [1, 2]}, 1, {scaffold.DELTA_KEY: {"w": [1, 1]}}),
        train_reply({"w": [3, 4]}, 1, {scaffold.DELTA_KEY: {"w": [3, 5]}})])
    assert strategy.c["w"].tolist() == [1, 1.5]  # (|S|/N) * mean = sum / N
    assert arrays(new)["w"].tolist() == [1, 1.5]  # x + eta_g * (mean y - x)


def test_scaffold_client_step_and_option_two_update_by_hand():
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    nn.init.zeros_(net[1].weight)
    c = {"1.weight": torch.tensor([[0.1], [0.2]])}
    state = {"scaffold": {"1.weight": torch.tensor([[0.3], [-0.1]])}}
    hooks = scaffold.client_hooks(ConfigRecord(), {scaffold.C_KEY: c})
    result = local_update(net, one_sample_site([1.0], 0), TrainParams(1, 1, lr=1.0), hooks, state)
    # grad CE at 0 = p - onehot = (-0.5, 0.5); step with correction c - c_i = (-0.2, 0.3)
    assert torch.allclose(net[1].weight, torch.tensor([[0.7], [-0.8]]))
    # c_i+ = c_i - c + (x - y) / (K lr) = (0.2, -0.3) + (-0.7, 0.8) = (-0.5, 0.5)
    assert torch.allclose(result.state["scaffold"]["1.weight"], torch.tensor([[-0.5], [0.5]]))
    assert torch.allclose(result.outbox[scaffold.DELTA_KEY]["1.weight"], torch.tensor([[-0.8], [0.6]]))


@pytest.mark.parametrize("place", ["step", "gradient"])
def test_scaffold_with_momentum_places_the_correction_and_recovers_the_mean_gradient(place):
    """2 steps, momentum 0.9, lr 1, d = c - c_i = (-0.2, 0.3). step: each step moves -d outside
    momentum (push K d = 2d); gradient: d goes through the buffer (push a d, a = 1.9 + 1 = 2.9).
    Both see the same gradients g1, g2, and option II's c_i+ is their momentum-weighted mean
    (1.9 g1 + g2) / 2.9 in both."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    nn.init.zeros_(net[1].weight)
    c = {"1.weight": torch.tensor([[0.1], [0.2]])}
    state = {"scaffold": {"1.weight": torch.tensor([[0.3], [-0.1]])}}
    config = ConfigRecord({scaffold.OPTION_KEY: "II", scaffold.PLACE_KEY: place})
    hooks = scaffold.client_hooks(config, {scaffold.C_KEY: c})
    result = local_update(net, one_sample_site([1.0], 0), TrainParams(2, 1, lr=1.0, momentum=0.9), hooks, state)
    d, g1 = torch.tensor([-0.2, 0.3]), torch.tensor([-0.5, 0.5])
    q = 1 - torch.sigmoid(torch.tensor(1.5))  # after step 1 w = -(g1 + d) = (0.7, -0.8)
    g2 = torch.stack([-q, q])
    push = 2 * d if place == "step" else 2.9 * d
    assert torch.allclose(net[1].weight.view(-1), -(1.9 * g1 + g2) - push)
    mean_g = (1.9 * g1 + g2) / 2.9
    assert torch.allclose(result.state["scaffold"]["1.weight"].view(-1), mean_g)


# ---------------------------------------------------------------- FedNova

def test_fednova_step_weight_matches_momentum_sgd():
    assert fednova.step_weight(5, 0.0) == 5
    assert fednova.step_weight(1, 0.9) == pytest.approx(1.0)
    assert fednova.step_weight(2, 0.9) == pytest.approx(2.9)  # g1 counts 1 + 0.9, g2 counts 1


def test_fednova_with_equal_tau_is_fedavg(monkeypatch):
    identity(monkeypatch)
    strategy = fednova.FedNova(momentum=0.9, min_available_nodes=2)
    strategy.configure_train(1, record(w=[0.5, -1.0]), ConfigRecord(), Nodes(2))
    replies = [train_reply({"w": [1, 2]}, 10, **{"num-steps": 5.0}),
               train_reply({"w": [3, 6]}, 30, **{"num-steps": 5.0})]
    new, _ = strategy.aggregate_train(1, replies)
    fedavg = aggregate_arrayrecords([m.content for m in replies], "num-examples")
    assert np.allclose(arrays(new)["w"], arrays(fedavg)["w"]) and np.allclose(arrays(new)["w"], [2.5, 5.0])


@pytest.mark.parametrize("tau_eff,expected", [("mean", 3.0), ("harmonic", 2.25)])
def test_fednova_normalises_unequal_local_steps_by_hand(tau_eff, expected, monkeypatch):
    identity(monkeypatch)
    strategy = fednova.FedNova(momentum=0.0, tau_eff=tau_eff, min_available_nodes=2)
    strategy.configure_train(1, record(w=[0.0], **{"bn.running_mean": [0.0]}), ConfigRecord(), Nodes(2))
    new, _ = strategy.aggregate_train(1, [
        train_reply({"w": [2.0], "bn.running_mean": [1.0]}, 1, **{"num-steps": 2.0}),
        train_reply({"w": [3.0], "bn.running_mean": [3.0]}, 1, **{"num-steps": 6.0})])
    # d = 0.5 * (-2/2) + 0.5 * (-3/6) = -0.75; tau_eff: mean 0.5*2 + 0.5*6 = 4, harmonic
    # 1 / (0.5/2 + 0.5/6) = 3; x = 0 - tau_eff * d = 3 or 2.25 (FedAvg would give 2.5)
    assert arrays(new)["w"].tolist() == [expected]
    assert arrays(new)["bn.running_mean"].tolist() == [2.0]  # statistics are plainly averaged


def test_fednova_skips_a_site_that_took_no_step(monkeypatch):
    identity(monkeypatch)
    strategy = fednova.FedNova(momentum=0.9, min_available_nodes=2)
    strategy.configure_train(1, record(w=[0.0]), ConfigRecord(), Nodes(2))
    new, _ = strategy.aggregate_train(1, [train_reply({"w": [2.0]}, 5, **{"num-steps": 1.0}),
                                          train_reply({"w": [0.0]}, 0, **{"num-steps": 0.0})])
    assert arrays(new)["w"].tolist() == [2.0]  # a_i = 0 would divide by zero


@pytest.mark.parametrize("key, value, message", [
    ("fednova", "tau_eff=median", "strategy.tau_eff must be one of harmonic | mean, got 'median'"),
    ("scaffold", "correction=momentum", "strategy.correction must be one of step | gradient, got 'momentum'"),
    ("scaffold", "option=III", "strategy.option must be one of I | II, got 'III'"),
    ("scaffold", "weights=sizes", "strategy.weights must be one of examples | uniform, got 'sizes'"),
])
def test_string_strategy_parameters_must_be_known(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose([f"strategy={key}", f"strategy.{value}"])


# ---------------------------------------------------------------- FedDyn

def test_feddyn_server_h_and_model_by_hand(monkeypatch):
    identity(monkeypatch)
    strategy = feddyn.FedDyn(alpha=0.5, num_clients=4, min_available_nodes=4)
    (msg, *_) = strategy.configure_train(1, record(w=[0.0]), ConfigRecord(), Nodes(4))
    assert msg.content["config"][feddyn.ALPHA_KEY] == 0.5
    new, _ = strategy.aggregate_train(1, [train_reply({"w": [1.0]}, 1), train_reply({"w": [3.0]}, 5)])
    # h = 0 - alpha * (1/m) * ((1-0) + (3-0)) = -0.5; w = mean(1, 3) - h / alpha = 2 + 1
    assert strategy.h["w"].tolist() == [-0.5] and arrays(new)["w"].tolist() == [3.0]


def test_feddyn_client_penalty_and_gradient_state_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1), [torch.zeros(1, 2)],
                       {"feddyn": {"weight": torch.tensor([[0.5, 0.5]])}}, TrainParams(1, 1, 0.1), None)
    hook = feddyn.DynamicRegularizer(alpha=0.1)
    hook.before_training(ctx)
    # -<g, w> + alpha/2 ||w - w0||^2 = -(0.5 + 1.0) + 0.05 * 5 = -1.25
    assert hook.extra_loss(ctx).item() == pytest.approx(-1.25)
    hook.after_training(ctx)  # g <- g - alpha (w - w0) = (0.5 - 0.1, 0.5 - 0.2)
    assert torch.allclose(ctx.state["feddyn"]["weight"], torch.tensor([[0.4, 0.3]]))


# ---------------------------------------------------------------- MOON

def test_moon_contrastive_loss_by_hand():
    z, z_glob, z_prev = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    # cos(z, z_glob) = 1, cos(z, z_prev) = 0, T = 0.5: -log(e^2 / (e^2 + e^0))
    assert moon.contrastive_loss(z, z_glob, z_prev, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_moon_hook_before_a_first_round_compares_with_the_global_model_twice():
    cfg = compose(["strategy=moon"])
    model = build_model(cfg.model, (1, 28, 28), 10)
    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1), [], {},
                       TrainParams(1, 1, 0.1), None)
    hook = moon.ModelContrastive(mu=2.0, temperature=0.5)
    hook.before_training(ctx)
    ctx.inputs = torch.randn(4, 1, 28, 28)
    ctx.features = model.features(ctx.inputs)
    assert hook.extra_loss(ctx).item() == pytest.approx(2.0 * math.log(2), rel=1e-5)  # pos = neg
    hook.after_training(ctx)
    assert set(ctx.state["moon"]) == set(model.state_dict())


# ---------------------------------------------------------------- FedBN

def test_fedbn_keeps_batchnorm_at_each_site_and_sites_differ():
    cfg = compose(["strategy=fedbn", "model=simple_cnn_bn"])
    model = build_model(cfg.model, (1, 28, 28), 10)  # one model shared by two sites, as in a Ray actor
    keys = fedbn.batchnorm_keys(model)
    assert len(keys) == 10 and all(k in model.state_dict() for k in keys)
    gen = torch.Generator().manual_seed(0)
    sites = [SiteTensors(torch.randn(32, 1, 28, 28, generator=gen) * s + s, torch.arange(32) % 10,
                         torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), torch.zeros(1))
             for s in (1.0, 3.0)]
    states = [{}, {}]
    for site, state in zip(sites, states):
        hooks = fedbn.client_hooks(ConfigRecord(), {})
        local = set().union(*(h.local_keys(model) for h in hooks))
        local_update(model, site, TrainParams(1, 16, 0.05), hooks, state)
        sent = {k for k in model.state_dict() if k not in local}
        assert not sent & keys  # BatchNorm tensors never leave the site
    a, b = states[0]["fedbn"], states[1]["fedbn"]
    assert set(a) == keys and all(not torch.equal(a[k], b[k]) for k in keys if "num_batches" not in k)
    fedbn.evaluation_hooks()[0].before_evaluate(model, states[0])  # site 0 gets its own back
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in keys)


def test_fedbn_needs_a_model_with_batchnorm():
    with pytest.raises(ConfigError, match="simple_cnn_bn"):
        compose(["strategy=fedbn"])
    compose(["strategy=fedbn", "model=resnet18"])
    with pytest.raises(ConfigError, match="BatchNorm"):
        compose(["strategy=fedbn", "model=resnet18", "model.norm=group"])


# ---------------------------------------------------------------- q-FedAvg and Flower's

def test_qfedavg_reports_the_received_models_loss():
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    nn.init.zeros_(net[1].weight)
    result = local_update(net, one_sample_site([1.0], 0), TrainParams(1, 1, 1.0),
                          qfedavg.client_hooks(ConfigRecord(), {}), {})
    assert result.metrics[qfedavg.LOSS_KEY] == pytest.approx(math.log(2))  # uniform logits


@pytest.mark.parametrize("args, cls, attrs", [
    (["strategy=fedavgm", "strategy.server_momentum=0.5"], "FedAvgM", {"server_momentum": 0.5}),
    (["strategy=fedadam", "strategy.eta=0.2"], "FedAdam", {"eta": 0.2, "beta_1": 0.9}),
    (["strategy=fedyogi", "strategy.tau=0.01"], "FedYogi", {"tau": 0.01}),
    (["strategy=fedadagrad", "strategy.eta=0.3"], "FedAdagrad", {"eta": 0.3}),
    (["strategy=fedtrimmedavg", "strategy.beta=0.1"], "FedTrimmedAvg", {"beta": 0.1}),
    (["strategy=krum", "strategy.num_malicious=1"], "Krum", {"num_malicious_nodes": 1}),
    (["strategy=multikrum", "strategy.num_selected=3"], "MultiKrum", {"num_nodes_to_select": 3}),
    (["strategy=bulyan"], "Bulyan", {"num_malicious_nodes": 0}),
    (["strategy=qfedavg", "strategy.q=0.5", "lr=0.05"], "QFedAvg", {"q": 0.5, "client_learning_rate": 0.05}),
    (["strategy=fedmedian"], "FedMedian", {}),
])
def test_flower_strategies_get_their_parameters(args, cls, attrs):
    strategy = build_strategy(compose(args))
    assert type(strategy).__name__ == cls and type(strategy).__module__.startswith("flwr.")
    for key, value in attrs.items():
        assert getattr(strategy, key) == value


def test_every_strategy_builds_and_bulyan_checks_its_client_count():
    for name in strategies.names():
        extra = ["model=simple_cnn_bn"] if name == "fedbn" else []
        assert build_strategy(compose([f"strategy={name}", *extra])) is not None
    with pytest.raises(ConfigError, match="integer BatchNorm counters"):
        compose(["strategy=qfedavg", "model=simple_cnn_bn"])
    with pytest.raises(ConfigError, match="4\\*num_malicious\\+3"):
        compose(["strategy=bulyan", "strategy.num_malicious=2"])


def test_strategies_declare_their_capabilities_in_their_own_file():
    from fedcls.apps.cohort import preaggregate

    assert preaggregate.eligible("fedavg") and preaggregate.eligible("fedadam")
    assert not preaggregate.eligible("scaffold") and not preaggregate.eligible("fedbn")
    assert strategies.capabilities("fedbn").needs_batchnorm
    with pytest.raises(ConfigError, match="needs a model with BatchNorm"):
        compose(["strategy=fedbn", "model=simple_cnn"])
    assert compose(["strategy=fedbn", "model=simple_cnn_bn"]).strategy.name == "fedbn"
    # the contract is read once: required members named, optional ones filled in
    with pytest.raises(TypeError, match="strategies/broken.py must define build_server"):
        strategies.StrategySpec.of("broken", _module(PARAMS={}))
    spec = strategies.StrategySpec.of("plain", _module(PARAMS={}, build_server=print))
    assert spec.client_hooks(None, {}) == [] and spec.evaluation_hooks() == []
    assert spec.CAPABILITIES == strategies.Capabilities()


def _module(**members):
    import types

    module = types.ModuleType("m", "A test strategy.")
    module.__dict__.update(members)
    return module
