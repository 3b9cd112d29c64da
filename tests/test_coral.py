"""CORAL and site domains: the loss and the pooled statistics by hand, domains, target sites."""

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

from fedcls.config import compose
from fedcls.coral import CoralHook, coral_loss, covariance, feature_stats, pool
from fedcls.data.domains import apply_domain
from fedcls.domain_eval import DomainEvaluation
from fedcls.errors import ConfigError
from fedcls.runtime import federated_data
from fedcls.data.federated import site_tensors
from strategy_helpers import identity


def test_covariance_and_coral_loss_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    # means (3, 4); centred rows (-2,-2), (0,-2), (2,4); C = X^T X / 2 = [[8, 12], [12, 24]] / 2
    assert torch.allclose(covariance(x), torch.tensor([[4.0, 6.0], [6.0, 12.0]]))
    target = torch.tensor([[2.0, 0.0], [0.0, 10.0]])
    # ||C_S - C_T||_F^2 = 2^2 + 6^2 + 6^2 + 2^2 = 80; / (4 d^2) = 80 / 16
    assert float(coral_loss(x, target)) == pytest.approx(5.0)
    assert float(coral_loss(x, covariance(x))) == pytest.approx(0.0)


def test_pooled_statistics_of_two_sites_equal_those_of_their_union():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, generator=gen, dtype=torch.float64), 2 + torch.randn(12, 3, generator=gen, dtype=torch.float64)
    pooled = pool([feature_stats(a), feature_stats(b)])
    union = torch.cat([a, b])
    assert float(pooled["n"]) == 19
    assert torch.allclose(pooled["mean"].double(), union.mean(0), atol=1e-6)
    assert torch.allclose(pooled["cov"].double(), covariance(union), atol=1e-5)


def test_coral_hook_adds_weighted_loss_on_the_batch_features():
    feats = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]], requires_grad=True)
    hook = CoralHook(0.4, torch.tensor([[2.0, 0.0], [0.0, 10.0]]))
    ctx = type("Ctx", (), {"features": feats})()
    loss = hook.extra_loss(ctx)
    assert float(loss.detach()) == pytest.approx(0.4 * 5.0)
    loss.backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0  # it trains the features
    ctx.features = feats[:1]
    assert hook.extra_loss(ctx) is None  # no covariance from one sample


def test_domains_chain_and_are_seeded():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    chained = apply_domain(x, "contrast:0.5+noise:0.1", seed=3)
    assert torch.equal(chained, apply_domain(x, "contrast:0.5+noise:0.1", seed=3))
    assert not torch.equal(chained, apply_domain(x, "contrast:0.5+noise:0.1", seed=4))
    assert torch.allclose(apply_domain(x, "invert", 0), 1 - x)
    gains = apply_domain(x, "color:0.3", 0) / x.clamp_min(1e-6)
    assert gains[:, 0].std() < 1e-3 and not torch.allclose(gains[:, 0].mean(), gains[:, 1].mean())


def test_target_site_holds_the_target_dataset_and_sources_their_device_domain():
    cfg = compose(["num_clients=3", "domain.targets=[2]", "domain.target_dataset=digits",
                   "domain.sites=[identity,invert,identity]"])
    data = federated_data(cfg)
    assert data.sites[2].foreign and len(data.sites[2].train_idx) + len(data.sites[2].test_idx) == len(data.target.train_y)
    assert sum(len(s.train_idx) + len(s.test_idx) for s in data.sites[:2]) == len(data.dataset.train_y)
    plain, inverted = (site_tensors(data, s, torch.device("cpu")) for s in (0, 1))
    ds = data.dataset
    raw = ds.train_x[torch.as_tensor(data.sites[1].train_idx)].float() / 255
    assert torch.allclose(inverted.train_x, ds.normalize((1 - raw) * 255), atol=1e-5)
    assert plain.train_x.shape[1:] == inverted.train_x.shape[1:]


def _eval_reply(site, acc, n):
    return Message(RecordDict({"metrics": MetricRecord({"site": float(site), "accuracy": acc,
                                                        "num-examples": n, "loss": 1.0})}),
                   dst_node_id=1, message_type="evaluate")


def test_target_accuracy_is_the_targets_weighted_accuracy_and_targets_do_not_train(monkeypatch):
    identity(monkeypatch)
    ext = DomainEvaluation(compose(["num_clients=4", "domain.targets=[2,3]"]))
    assert ext.train_sites(1) == {0, 1}
    metrics = ext.after_evaluate(1, [_eval_reply(0, 0.9, 10), _eval_reply(2, 0.5, 30), _eval_reply(3, 0.1, 10)])
    assert metrics["target_accuracy"] == pytest.approx((0.5 * 30 + 0.1 * 10) / 40)
    assert metrics["site_accuracy"] == {"0": 0.9, "2": 0.5, "3": 0.1}
    assert ext.summary()["sources"] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["domain.sites=[identity,blurr:1]"], "unknown domain 'blurr'"),
    (["domain.sites=[contrast:0+noise:1]"], "needs a value > 0"),
    (["domain.targets=[10]"], "site ids in 0..9"),
    (["domain.target_dataset=digitz", "domain.targets=[1]"], "Did you mean 'digits'"),
    (["domain.target_dataset=digits"], "needs target sites"),
    (["coral.enabled=true"], "coral.mode=target needs target sites"),
    (["coral.mode=mean"], "unknown CORAL mode"),
    (["coral.lambda=-1"], "coral.lambda must be >= 0"),
    (["scenario=continual_classes", "domain.targets=[1]"], "continual runs do not take"),
])
def test_bad_domain_settings_name_the_fix(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        compose(args)


class StatsGrid:
    """Nodes 100+s serve site s; each answers a statistics query with fixed features."""

    def __init__(self, sites):
        self.site_of_node = {100 + s: s for s in range(sites)}
        self.asked = []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            site = self.site_of_node[m.metadata.dst_node_id]
            self.asked.append(site)
            feats = torch.arange(6, dtype=torch.float64).view(3, 2) * (site + 1)
            replies.append(_stats_reply(feature_stats(feats)))
        return replies


def _stats_reply(stats):
    from flwr.app import ArrayRecord

    return Message(RecordDict({"coral.stats": ArrayRecord(stats)}), dst_node_id=0, message_type="query")


@pytest.mark.parametrize("mode, asked", [("target", [3]), ("pooled", [0, 1, 2, 3])])
def test_coral_server_asks_the_statistics_sites_and_forwards_the_pool(monkeypatch, mode, asked):
    from flwr.app import ArrayRecord, ConfigRecord

    from fedcls.coral import CoralServer

    identity(monkeypatch)
    cfg = compose(["num_clients=4", "domain.targets=[3]", "coral.enabled=true", f"coral.mode={mode}"])
    grid, server = StatsGrid(4), CoralServer(cfg)
    server.before_train(1, ArrayRecord({"w": torch.zeros(2)}), grid, ConfigRecord({"fedcls-config": "{}"}))
    assert sorted(grid.asked) == asked
    feats = torch.cat([torch.arange(6, dtype=torch.float64).view(3, 2) * (s + 1) for s in asked])
    messages = server.outgoing([_stats_reply({"x": torch.zeros(1)}) for _ in range(2)])
    for m in messages:
        sent = m.content["coral.stats"].to_torch_state_dict()
        assert torch.allclose(sent["cov"].double(), covariance(feats), atol=1e-4)
