"""Continual federated learning: schedule, streams, metrics, Avalanche plugins at the sites."""

import pytest
import torch

from fedcls.algorithms.continual import schedule
from fedcls.algorithms.continual.client import EXAMPLES, FEDERATED, IMPORTANCE, continual_hooks, last_trained
from fedcls.algorithms.continual.metrics import continual_metrics
from fedcls.algorithms.continual.server import ImportanceAverage
from fedcls.algorithms.continual.streams import class_groups, global_test_sets, site_stream
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import TrainParams, local_update
from fedcls.config import compose
from fedcls.data.federated import federated_data
from fedcls.errors import ConfigError

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=600", "model=mlp", "num_clients=3"]


def cfg_of(*args):
    return compose(["scenario=continual_classes", *SMALL, *args])


def test_staggered_schedule_and_late_sites_by_hand():
    cfg = cfg_of("num_clients=5", "continual.schedule=staggered", "continual.stagger=2",
                 "continual.rounds_per_experience=3", "continual.experiences=3", "rounds=11",
                 "continual.late_sites=2", "continual.join_round=4")
    assert [schedule.lag(cfg, s) for s in range(5)] == [0, 0, 1, 2, 2]  # round(s*2/4)
    # site 0 moves to experience 1 at round 4, site 3 (lag 2) at round 6
    assert [schedule.site_experience(cfg, 0, r) for r in range(1, 12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert [schedule.site_experience(cfg, 3, r) for r in range(1, 12)] == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert schedule.active_sites(cfg, 3) == {0, 1, 2} and schedule.active_sites(cfg, 4) == set(range(5))
    assert schedule.experience_end_rounds(cfg) == [5, 8, 11]  # 3 + 2, 6 + 2, last round
    assert schedule.rounds_needed(cfg) == 11


def test_class_incremental_stream_splits_each_site_by_class_group():
    cfg = cfg_of("partition.kind=dirichlet", "partition.alpha=0.5")
    data = federated_data(cfg)
    groups = class_groups(cfg, 10)
    assert sorted(sum(groups, [])) == list(range(10)) and [len(g) for g in groups] == [2] * 5
    assert class_groups(cfg, 10) == groups and class_groups(cfg_of("seed=1"), 10) != groups
    stream = site_stream(cfg, data, 1, torch.device("cpu"))
    site_train = data.dataset.train_y[torch.as_tensor(data.sites[1].train_idx)]
    for e, t in enumerate(stream.tensors):
        assert set(t.train_y.tolist()) <= set(groups[e])
        assert len(t.train_y) == int(torch.isin(site_train, torch.tensor(groups[e])).sum())
        assert len(stream.train_experience(e).dataset) == len(t.train_y)
    assert sum(len(t.train_y) for t in stream.tensors) == len(site_train)
    tests = global_test_sets(cfg, data)
    assert sum(len(y) for _, y in tests) == len(data.dataset.test_y)


def test_domain_incremental_stream_sees_the_same_samples_through_each_domain():
    cfg = compose(["scenario=continual_domains", *SMALL])
    stream = site_stream(cfg, federated_data(cfg), 0, torch.device("cpu"))
    first, rotated = stream.tensors[0], stream.tensors[4]  # identity, rotate:180
    assert torch.equal(first.train_y, rotated.train_y)
    assert torch.allclose(rotated.train_x, torch.flip(first.train_x, dims=(2, 3)), atol=1e-4)
    again = site_stream(cfg, federated_data(cfg), 0, torch.device("cpu"))
    assert torch.equal(again.tensors[3].train_x, stream.tensors[3].train_x)  # seeded noise


def test_metrics_follow_avalanche_definitions_by_hand():
    matrix = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.3, 0.6, 0.7]]
    m = continual_metrics(matrix, [100, 100, 200])
    assert m["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert m["bwt"] == pytest.approx(-m["forgetting"])
    assert m["average_accuracy"] == pytest.approx((0.3 * 100 + 0.6 * 100 + 0.7 * 200) / 400)
    after_two = continual_metrics(matrix[:2], [100, 100, 200])
    assert after_two["average_accuracy"] == pytest.approx(0.65) and after_two["forgetting"] == pytest.approx(0.4)
    assert continual_metrics(matrix[:1], [100, 100, 200])["forgetting"] is None


def test_importances_average_weighted_by_examples():
    avg = ImportanceAverage()
    avg.add(0, {"w": torch.tensor([1.0, 4.0]), EXAMPLES: torch.tensor(1.0)})
    avg.add(0, {"w": torch.tensor([4.0, 1.0]), EXAMPLES: torch.tensor(3.0)})
    avg.add(2, {"w": torch.tensor([2.0, 2.0]), EXAMPLES: torch.tensor(5.0)})
    means = avg.means()
    assert torch.allclose(means[0]["w"], torch.tensor([13 / 4, 7 / 4]))
    assert torch.allclose(means[2]["w"], torch.tensor([2.0, 2.0]))


def _round(cfg, model, stream, exp, state, inbox=None, seed=0):
    """One site round of the one loop with the continual hooks; returns the result."""
    hooks = continual_hooks(cfg, stream, exp, state, inbox or {})
    params = TrainParams(1, 32, 0.05, 0.9, 0.0, seed)
    return local_update(model, stream.tensors[exp], params, hooks, state)


def _site(*args):
    cfg = cfg_of("partition.kind=iid", *args)
    data = federated_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes)
    return cfg, model, site_stream(cfg, data, 0, torch.device("cpu"))


def test_ewc_through_the_plugin_hook_adds_the_penalty_by_hand_and_persists():
    cfg, model, stream = _site("continual.method=ewc", "continual.ewc_lambda=7",
                               "continual.aggregate_importances=true")
    state = {}
    first = _round(cfg, model, stream, 0, state)
    assert last_trained(first.state) == 0 and first.outbox == {}
    # next round on experience 1: the hook closes experience 0 with the weights it receives
    anchor = {k: p.detach().clone() for k, p in model.named_parameters()}
    hooks = continual_hooks(cfg, stream, 1, first.state, {})
    from fedcls.algorithms.training import TrainContext

    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1), [], first.state,
                       TrainParams(1, 32, 0.1), stream.tensors[1])
    hooks[0].before_training(ctx)
    importances = hooks[0].plugin.importances[0]
    assert all(float(v.data.sum()) > 0 for v in importances.values())
    sent = ctx.outbox[f"{IMPORTANCE}0"]
    assert float(sent[EXAMPLES]) == len(stream.tensors[0].train_y)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ctx.inputs, ctx.targets = stream.tensors[1].train_x[:4], stream.tensors[1].train_y[:4]
    ctx.logits = model(ctx.inputs)
    ctx.loss = torch.nn.functional.cross_entropy(ctx.logits, ctx.targets)
    penalty = hooks[0].extra_loss(ctx)
    expected = 7 * sum((importances[k].data * (p - anchor[k]) ** 2).sum()
                       for k, p in model.named_parameters())
    assert float(penalty.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    hooks[0].after_training(ctx)
    from avalanche.training.plugins import EWCPlugin

    from fedcls.algorithms.continual.plugins import load

    assert set(load(ctx.state["ewc"], EWCPlugin(1.0), model).importances) == {0}  # the plugin survives in the state


def test_federated_importances_replace_the_sites_own():
    cfg, model, stream = _site("continual.method=ewc", "continual.aggregate_importances=true",
                               "continual.ewc_lambda=1")  # 0.5 stays below the cap 0.5 * 1 / (0.1 * 1)
    state = _round(cfg, model, stream, 0, {}).state
    state = _round(cfg, model, stream, 1, state).state
    from avalanche.training.plugins import EWCPlugin

    from fedcls.algorithms.continual.plugins import load

    own = {k: v.data.clone() for k, v in load(state["ewc"], EWCPlugin(1.0), model).importances[0].items()}
    federated = {k: torch.full_like(v, 0.5) for k, v in own.items()}
    hooks = continual_hooks(cfg, stream, 1, state, {f"{FEDERATED}0": federated})
    from fedcls.algorithms.training import TrainContext

    ctx = TrainContext(model, torch.optim.SGD(model.parameters(), lr=0.1), [], state,
                       TrainParams(1, 32, 0.1), stream.tensors[1])
    hooks[0].before_training(ctx)
    assert all(torch.equal(v.data, federated[k]) for k, v in hooks[0].plugin.importances[0].items())


def test_replay_memory_is_balanced_kept_in_state_and_trained_on():
    cfg, model, stream = _site("continual.method=replay", "continual.memory_size=20")
    state = _round(cfg, model, stream, 0, {}).state
    assert _round(cfg, model, stream, 0, dict(state)).metrics["replay_memory"] == 0
    second = _round(cfg, model, stream, 1, state)
    assert second.metrics["replay_memory"] == 20
    assert second.examples == len(stream.tensors[1].train_y) + 20
    third = _round(cfg, model, stream, 2, second.state)
    from fedcls.algorithms.continual.replay import load_buffer

    buffer = load_buffer(third.state["replay"], 20)
    assert [len(b.buffer) for b in buffer.buffer_groups.values()] == [10, 10]
    groups = class_groups(cfg, 10)
    for g, b in buffer.buffer_groups.items():  # each group holds samples of its own experience
        assert set(int(label) for label in b.buffer.targets) <= set(groups[g])


@pytest.mark.parametrize("spec", ["LwFPlugin(alpha=1, temperature=2)", "MASPlugin(lambda_reg=1)",
                                  "SynapticIntelligencePlugin(si_lambda=1)"])
def test_other_avalanche_plugins_run_at_a_site_across_experiences(spec):
    cfg, model, stream = _site(f"continual.plugins=['{spec}']", "continual.method=naive")
    state = _round(cfg, model, stream, 0, {}).state
    result = _round(cfg, model, stream, 1, state)
    assert "plugin.0" in result.state and result.metrics["train_loss"] == result.metrics["train_loss"]
    from fedcls.algorithms.continual.plugins import dump, load, make_plugin

    entry = result.state["plugin.0"]  # kept as data: a fresh plugin given it dumps the same again
    again = dump(load(entry, make_plugin(spec), model))
    assert again.keys() == entry.keys() and all(torch.equal(again[k], entry[k]) for k in entry)


def test_a_plugin_state_that_is_a_pickle_is_refused_without_running_it(tmp_path):
    import pickle

    from fedcls.algorithms.continual.plugins import load, make_plugin

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    entry = {"pickle": torch.frombuffer(bytearray(pickle.dumps(Payload())), dtype=torch.uint8)}
    cfg, model, _ = _site("continual.method=ewc")
    with pytest.raises(ValueError, match="written by an older fedcls"):
        load(entry, make_plugin("EWCPlugin(ewc_lambda=1)"), model)
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    (["continual.method=ewc+replayy"], "Did you mean 'ewc+replay'"),
    (["continual.kind=task_incremental"], "continual kind"),
    (["rounds=10"], "set rounds=15"),
    (["continual.schedule=staggered", "continual.stagger=3"], "set rounds=18"),
    (["continual.experiences=11"], "11 is more than the 10 classes"),
    (["continual.late_sites=3"], "at most num_clients-1"),
    (["continual.plugins=[EWCPlugn]"], "Did you mean 'EWCPlugin'"),
    (["continual.plugins=['LwFPlugin(alpha=']"], "cannot read"),
    (["continual.ewc_lambda=-1"], "ewc_lambda must be >= 0"),
    (["scenario=continual_domains", "continual.domains=[identity,spin:3,a,b,c]"], "unknown domain 'spin'"),
    (["scenario=continual_domains", "continual.domains=[identity]"], "one per experience"),
])
def test_bad_continual_settings_name_the_fix(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        cfg_of(*args)
