"""Closed-form CORAL (coral.align=recolour; Sun, Feng & Saenko 2016): the map by hand, its
fold into the head, the target site's hook and the server's half."""

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcls.algorithms.coral import covariance, feature_stats
from fedcls.algorithms.coral_align import (
    Recolour,
    RecolourServer,
    evaluation_hooks,
    fold_into_head,
    recolouring,
)
from fedcls.algorithms.models import Classifier
from fedcls.config import compose
from fedcls.errors import ConfigError
from strategy_helpers import identity
from test_coral import StatsGrid, _site_feats


def _stats(mean, cov):
    return {"mean": torch.tensor(mean, dtype=torch.float64), "cov": torch.tensor(cov, dtype=torch.float64)}


def test_recolouring_of_diagonal_covariances_by_hand():
    source, target = _stats([1.0, 2.0], [[4.0, 0.0], [0.0, 9.0]]), _stats([3.0, -1.0], [[1.0, 0.0], [0.0, 16.0]])
    a, b = recolouring(source, target, eps=0.0)  # A = diag(sqrt(4/1), sqrt(9/16))
    assert torch.allclose(a, torch.diag(torch.tensor([2.0, 0.75], dtype=torch.float64)))
    assert torch.allclose(b, torch.tensor([1.0 - 2.0 * 3.0, 2.0 - 0.75 * -1.0], dtype=torch.float64))
    # eps = 0.2 x (tr C_S + tr C_T) / 2d = 0.2 x 30 / 4 = 1.5 on both sides
    a, _ = recolouring(source, target, eps=0.2)
    assert torch.allclose(a.diagonal(), torch.tensor([math.sqrt(5.5 / 2.5), math.sqrt(10.5 / 17.5)],
                                                     dtype=torch.float64))


def test_the_map_sends_target_features_to_exactly_the_source_mean_and_covariance():
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(200, 3, generator=gen, dtype=torch.float64) @ torch.tensor([[2.0, 0, 0], [1, 1, 0], [0, 3, .5]],
                                                                               dtype=torch.float64) + 4
    xt = torch.randn(150, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64)
    source, target = feature_stats(xs), feature_stats(xt)
    a, b = recolouring(source, target, eps=0.0)
    mapped = xt @ a.T + b
    assert torch.allclose(mapped.mean(0), xs.mean(0), atol=1e-9)
    assert torch.allclose(covariance(mapped), covariance(xs), atol=1e-9)
    a, b = recolouring(source, target, eps=0.5)  # regularised: A (C_T + eI) A^T = C_S + eI
    reg = 0.5 * float(source["cov"].trace() + target["cov"].trace()) / 6 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(a @ (target["cov"] + reg) @ a.T, source["cov"] + reg, atol=1e-9)
    assert torch.allclose((xt @ a.T + b).mean(0), xs.mean(0), atol=1e-9)


def test_equal_statistics_give_the_identity_map():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = recolouring(feature_stats(x), feature_stats(x), eps=0.1)
    assert torch.allclose(a, torch.eye(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(b, torch.zeros(4, dtype=torch.float64), atol=1e-9)


def test_the_target_hook_folds_the_map_into_the_head():
    torch.manual_seed(0)
    model = Classifier(torch.nn.Identity(), 2, 3)  # features are the inputs themselves
    head = torch.nn.Linear(2, 3)
    head.load_state_dict(model.head.state_dict())
    unlabelled = torch.randn(40, 2) * torch.tensor([3.0, 0.5]) + 1
    source = _stats([0.0, 5.0], [[2.0, 0.5], [0.5, 1.0]])
    Recolour(source, eps=1e-9).before_evaluate(model, {}, unlabelled)
    a, b = recolouring(source, feature_stats(unlabelled.double()), eps=1e-9)
    x = torch.randn(7, 2)
    assert torch.allclose(model(x), head((x.double() @ a.T + b).float()), atol=1e-5)
    small = torch.nn.Linear(2, 1)
    small.weight.data, small.bias.data = torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])
    fold_into_head(small, torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
                   torch.ones(2, dtype=torch.float64))  # W A = [2, 2]; c + W b = 3 + 1 + 2
    assert small.weight.tolist() == [[2.0, 2.0]] and small.bias.tolist() == [6.0]


def test_the_server_sends_the_sources_pool_to_the_targets_evaluate_messages_only(monkeypatch):
    identity(monkeypatch)
    cfg = compose(["num_clients=4", "domain.targets=[3]", "coral.align=recolour"])
    grid, server = StatsGrid(4), RecolourServer(cfg)
    server.before_train(1, ArrayRecord({"w": torch.zeros(2)}), grid, ConfigRecord({"fedcls-config": "{}"}))
    shared = RecordDict({"config": ConfigRecord({})})  # as Flower's FedAvg builds them: one payload
    messages = [Message(shared, dst_node_id=n, message_type="evaluate") for n in (100, 103)]
    source_msg, target_msg = server.outgoing_evaluate(1, ArrayRecord({"w": torch.zeros(2)}), messages)
    assert sorted(grid.asked) == [0, 1, 2]  # the sources only
    assert "coral.recolour" not in source_msg.content.array_records
    sent = target_msg.content["coral.recolour"].to_torch_state_dict()
    assert torch.allclose(sent["cov"].double(), covariance(_site_feats([0, 1, 2])), atol=1e-4)
    assert len(evaluation_hooks(cfg, {"coral.recolour": sent})) == 1
    assert evaluation_hooks(cfg, {}) == [] and evaluation_hooks(compose([]), {"coral.recolour": sent}) == []


@pytest.mark.parametrize("args, message", [
    (["coral.align=recolor", "domain.targets=[1]"], "Did you mean 'recolour'"),
    (["coral.align=recolour"], "coral.align=recolour re-colours target sites' features"),
    (["coral.recolour_eps=0"], "coral.recolour_eps must be > 0"),
])
def test_bad_alignment_settings_name_the_fix(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        compose(args)


def test_the_target_table_names_the_alignment():
    from fedcls.studies.domain_report import _setting

    assert _setting(compose(["scenario=digits_shift", "coral.align=recolour"]).to_dict()) == "fedavg + recolour (eps 1)"
    assert _setting(compose(["scenario=digits_shift"]).to_dict()) == "fedavg"
