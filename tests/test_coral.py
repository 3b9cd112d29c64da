"""CORAL and site domains: the loss and the pooled statistics by hand, domains, target sites."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedcls.algorithms.coral import CoralHook, coral_loss, covariance, feature_stats, pool
from fedcls.algorithms.domain_eval import DomainEvaluation
from fedcls.config import compose
from fedcls.data.domains import apply_domain
from fedcls.data.federated import federated_data, site_tensors
from fedcls.errors import ConfigError
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
    (["coral.mode=mean"], "unknown coral mode"),
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
            replies.append(Message(RecordDict({"coral.stats": ArrayRecord(feature_stats(feats))}), reply_to=m))
        return replies


def _site_feats(sites):
    return torch.cat([torch.arange(6, dtype=torch.float64).view(3, 2) * (s + 1) for s in sites])


def _train_message(node, content=None):
    return Message(content or RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")


@pytest.mark.parametrize("mode, train_targets, asked", [
    ("target", True, [0, 1, 2, 3]), ("target", False, [3]), ("pooled", True, [0, 1, 2, 3])])
def test_coral_server_sends_each_side_the_other_sides_pool(monkeypatch, mode, train_targets, asked):
    from fedcls.algorithms.coral import CoralServer

    identity(monkeypatch)
    cfg = compose(["num_clients=4", "domain.targets=[3]", "coral.enabled=true", f"coral.mode={mode}",
                   f"coral.train_targets={str(train_targets).lower()}"])
    grid, server = StatsGrid(4), CoralServer(cfg)
    server.before_train(1, ArrayRecord({"w": torch.zeros(2)}), grid, ConfigRecord({"fedcls-config": "{}"}))
    assert sorted(grid.asked) == asked
    shared = RecordDict({"config": ConfigRecord({})})  # Flower's FedAvg sends every node one payload
    source_msg, target_msg = server.outgoing([_train_message(100, shared), _train_message(103, shared)])
    sent = {k: m.content["coral.stats"].to_torch_state_dict()["cov"].double() for k, m in
            (("source", source_msg), ("target", target_msg)) if "coral.stats" in m.content.array_records}
    assert ("target" in sent) == train_targets  # without its training the target is sent nothing
    if mode == "pooled":  # everyone aligns to the union of every site asked
        assert torch.allclose(sent["source"], covariance(_site_feats(asked)), atol=1e-4)
        assert torch.allclose(sent["target"], sent["source"])
        return
    assert torch.allclose(sent["source"], covariance(_site_feats([3])), atol=1e-4)  # the target's
    if train_targets:  # the target gets the sources' pool, and the round's alignment is recorded
        assert torch.allclose(sent["target"], covariance(_site_feats([0, 1, 2])), atol=1e-4)
        metrics = server.after_round(1, None)
        assert metrics["coral_trace_targets"] == pytest.approx(float(covariance(_site_feats([3])).trace()), rel=1e-5)


def test_target_train_loss_is_filled_with_the_sources_weighted_mean(monkeypatch):
    from fedcls.algorithms.coral import CoralServer

    identity(monkeypatch)
    server = CoralServer(compose(["num_clients=3", "domain.targets=[2]", "coral.enabled=true",
                                  "coral.target_update=averaged"]))
    server.site_of_node = {100: 0, 101: 1, 102: 2}
    replies = []
    for node, metrics in ((100, {"train_loss": 1.0, "num-examples": 10}),
                          (101, {"train_loss": 4.0, "num-examples": 30}), (102, {"num-examples": 50})):
        query = _train_message(node)
        replies.append(Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=query))
    server.incoming(replies)
    assert float(replies[2].content["metrics"]["train_loss"]) == pytest.approx((1 * 10 + 4 * 30) / 40)


def test_cosine_coral_loss_by_hand_and_shrinking_cannot_meet_it():
    from fedcls.algorithms.coral import cosine_coral_loss

    x, target = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]]), torch.tensor([[2.0, 0.0], [0.0, 10.0]])
    # C_S = [[4, 6], [6, 12]]: <C_S, C_T> = 8 + 120 = 128, ||C_S|| = sqrt(232), ||C_T|| = sqrt(104)
    assert float(cosine_coral_loss(x, target)) == pytest.approx(1 - 128 / (232 * 104) ** 0.5, rel=1e-5)
    # both sides' features 100x smaller (covariances 1e4x): the paper's loss falls 1e8-fold, the
    # cosine loss does not move, nor when one side alone shrinks
    assert float(coral_loss(x / 100, target / 1e4)) == pytest.approx(float(coral_loss(x, target)) / 1e8, rel=1e-3)
    for small_target in (target, target / 1e4):
        assert float(cosine_coral_loss(x / 100, small_target)) == pytest.approx(
            float(cosine_coral_loss(x, target)), rel=1e-4)
    assert float(cosine_coral_loss(x, 3 * covariance(x))) == pytest.approx(0.0, abs=1e-6)


def test_a_target_trains_on_coral_alone_never_on_its_labels():
    from fedcls.algorithms.coral import unsupervised_update
    from fedcls.algorithms.models import build_model
    from fedcls.algorithms.training import TrainParams
    from fedcls.data.federated import SiteTensors

    cfg = compose(["model=simple_cnn"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 28, 28, generator=gen)
    bad_labels = torch.full((40,), 99)  # cross-entropy on these would raise
    data = SiteTensors(x, bad_labels, x[:4], bad_labels[:4], torch.zeros(1))
    head, body = model.head.weight.detach().clone(), model.features[-2].weight.detach().clone()
    params = TrainParams(epochs=1, batch_size=16, lr=0.05, momentum=0.0)
    with pytest.raises(RuntimeError, match="without CORAL statistics"):
        unsupervised_update(model, data, params, [], {})
    hook = CoralHook(1.0, torch.eye(84) * 0.1, "cosine")
    result = unsupervised_update(model, data, params, [hook], {})
    assert result.examples == 40 and result.metrics["num-steps"] == 3  # batches of 16, 16, 8
    assert torch.equal(model.head.weight, head)  # CORAL does not reach the classifier
    assert not torch.equal(model.features[-2].weight, body)  # it moves the features


def test_targets_train_with_coral_and_only_then():
    assert DomainEvaluation(compose(["num_clients=4", "domain.targets=[3]", "coral.enabled=true"])).train_sites(1) is None
    assert DomainEvaluation(compose(["num_clients=4", "domain.targets=[3]", "coral.enabled=true",
                                     "coral.train_targets=false"])).train_sites(1) == {0, 1, 2}


def test_mnist_framing_puts_the_digit_in_a_20x20_box():
    from fedcls.data.sources import frame_digits

    small = torch.full((2, 1, 8, 8), 255.0)
    full, framed = frame_digits(small, "full"), frame_digits(small, "mnist")
    assert full.shape == framed.shape == (2, 1, 28, 28) and bool((full == 255).all())
    assert int((framed > 0).sum()) == 2 * 20 * 20 and bool((framed[:, :, 4:24, 4:24] == 255).all())
    with pytest.raises(ConfigError, match="data.digits_framing"):
        compose(["data.digits_framing=centre"])


def test_the_targets_update_adds_to_the_sources_mean_through_flowers_fedavg(monkeypatch):
    """Sources n=1, 3 with w = 1, 5 (mean 4); the target (n=4) moved 0 -> 2. Its reply becomes
    4 + 2 * 8/4 = 8, and FedAvg's (1*1 + 3*5 + 4*8) / 8 = 6 = the sources' mean + the target's step."""
    from flwr.serverapp.strategy import FedAvg

    from fedcls.algorithms.coral import CoralServer

    identity(monkeypatch)
    server = CoralServer(compose(["num_clients=3", "domain.targets=[2]", "coral.enabled=true"]))
    server.site_of_node, server.global_weights = {100: 0, 101: 1, 102: 2}, {"w": torch.zeros(1)}
    replies = []
    for node, w, n in ((100, 1.0, 1), (101, 5.0, 3), (102, 2.0, 4)):
        content = RecordDict({"arrays": ArrayRecord({"w": torch.tensor([w])}),
                              "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})})
        replies.append(Message(content, reply_to=_train_message(node)))
    server.incoming(replies)
    assert float(replies[2].content["arrays"].to_torch_state_dict()["w"]) == pytest.approx(8.0)
    arrays, _ = FedAvg().aggregate_train(1, replies)
    assert float(arrays.to_torch_state_dict()["w"]) == pytest.approx(6.0)
