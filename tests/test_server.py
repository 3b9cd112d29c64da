import json
import random
from types import SimpleNamespace

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

from fedcls.apps.federation import (
    SiteOrderedGrid,
    _failures,
    aggregate_train_metrics,
    aggregate_with_spread,
    build_strategy,
    check_roster,
    sample_nodes_privately,
)
from fedcls.config import compose
from fedcls.errors import ConfigError
from fedcls.outputs.results import Recorder, console_line


def reply(acc, n, loss=1.0):
    return RecordDict({"metrics": MetricRecord({"accuracy": acc, "loss": loss, "num-examples": n})})


def test_aggregate_with_spread_by_hand():
    agg = aggregate_with_spread([reply(0.5, 10), reply(1.0, 30)], "num-examples")
    assert agg["accuracy"] == pytest.approx(0.875)  # (0.5*10 + 1.0*30) / 40
    assert agg["accuracy_mean"] == pytest.approx(0.75)
    assert (agg["accuracy_min"], agg["accuracy_max"]) == (0.5, 1.0)


def test_train_metrics_are_weighted_means_except_step_counts_which_are_summed_integers():
    def trained(loss, n, steps):
        return RecordDict({"metrics": MetricRecord({"train_loss": loss, "num-examples": n, "num-steps": steps})})

    agg = aggregate_train_metrics([trained(1.0, 10, 68), trained(2.0, 30, 69), trained(4.0, 40, 7)], "num-examples")
    assert agg["train_loss"] == pytest.approx(2.875)  # (1*10 + 2*30 + 4*40) / 80
    assert agg["num-steps"] == 144 and type(agg["num-steps"]) is int  # not (68*10+69*30+7*40)/80 = 37.875


def test_build_strategy_uses_flowers_classes_with_our_settings():
    fedavg = build_strategy(compose(["fraction_train=0.5", "num_clients=4"]))
    prox = build_strategy(compose(["strategy=fedprox", "strategy.proximal_mu=0.2"]))
    # min_available_nodes=1: the loop waits for all nodes itself, and late sites may sit out
    assert type(fedavg) is FedAvg and fedavg.fraction_train == 0.5 and fedavg.min_available_nodes == 1
    assert type(prox) is FedProx and prox.proximal_mu == 0.2


NOT_COUNTED = SimpleNamespace(count=lambda sent, received: None)  # for fake messages (test_traffic counts real ones)


class FakeGrid:
    """A stand-in transport: node ids in arbitrary order, replies in arbitrary order."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        return [SimpleNamespace(metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id))
                for m in reversed(list(messages))]


def test_site_ordered_grid_makes_sampling_and_replies_follow_site_order(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # Messages need a run and node id
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # outside a running Grid
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)
    site_of_node = {907: 2, 15: 0, 4411: 1}
    grid = SiteOrderedGrid(FakeGrid([4411, 907, 15]), site_of_node)
    grid.traffic = NOT_COUNTED  # the fake replies have no wire form
    assert grid.get_node_ids() == [15, 4411, 907]
    strategy = FedAvg(fraction_train=0.67, min_available_nodes=3)
    picks = []
    for _ in range(2):
        sample_nodes_privately("0-1")
        picks.append([m.metadata.dst_node_id for m in
                      strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)])
    assert picks[0] == picks[1] and len(picks[0]) == 2
    messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), SiteOrderedGrid(
        FakeGrid([907, 15, 4411]), site_of_node))
    replies = grid.send_and_receive(messages)
    sites = [site_of_node[r.metadata.src_node_id] for r in replies]
    assert sites == sorted(sites)


def test_draws_from_the_global_random_do_not_change_which_sites_are_sampled(monkeypatch):
    """Ray's init draws from `random` in another thread while round 1 runs; the sites sampled to
    evaluate must not depend on how many draws fall between the train and evaluate sampling."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    grid = SiteOrderedGrid(FakeGrid(list(range(10, 30))), {n: n - 10 for n in range(10, 30)})
    strategy = FedAvg(fraction_train=0.5, fraction_evaluate=0.25, min_available_nodes=1)

    def sampled(draws_between: int) -> tuple[list[int], list[int]]:
        sample_nodes_privately("0-1")
        train = [m.metadata.dst_node_id for m in strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)]
        [random.random() for _ in range(draws_between)]
        evaluate = strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)
        return train, [m.metadata.dst_node_id for m in evaluate]

    assert sampled(0) == sampled(57) == sampled(1)
    assert sampled(0)[1] != sampled(0)[0][:5]  # evaluation draws its own sites, after training's


def row(rnd, acc, failures=()):
    return {"accuracy": acc, "loss": 1 - acc, "train": {"train_loss": 0.5},
            "clients": {"accuracy_mean": acc, "accuracy_min": acc - 0.1, "accuracy_max": acc + 0.1},
            "sampled": 3, "failures": list(failures), "seconds": 1.5, "started_at": 0.0}


def test_recorder_writes_lines_as_rounds_end_and_a_summary_when_interrupted(tmp_path):
    cfg = compose(["rounds=5"])
    lines = []
    rec = Recorder(tmp_path / "run", cfg, echo=lines.append)
    rec.round(1, row(1, 0.5))
    rec.round(2, row(2, 0.7, failures=["ClientAppException: boom"]))
    stored = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in stored] == [1, 2] and stored[1]["accuracy"] == 0.7
    assert "round   2/5" in lines[1] and "1 failed: ClientAppException: boom" in lines[1]
    summary = rec.finish("interrupted", error="KeyboardInterrupt")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "interrupted" and on_disk["rounds_completed"] == 2
    assert summary["best_accuracy"] == 0.7 and summary["best_round"] == 2
    assert (tmp_path / "run" / "plots" / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("scenario: null")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_console_line_is_one_readable_line():
    line = console_line({"round": 3, **row(3, 0.9123)}, 20)
    assert "\n" not in line and "acc 0.9123" in line and "sites acc 0.912 [0.812-1.012]" in line


def test_roster_must_cover_every_site_once():
    check_roster({11: 1, 7: 0, 3: 2}, 3)
    with pytest.raises(ConfigError, match="set num_clients=10"):
        check_roster({n: n for n in range(10)}, 3)


def test_failure_reasons_are_shortened_to_the_exception_message():
    error = SimpleNamespace(reason="<class 'RayTaskError'>:<'ray::run() ...\n  File x\n"
                                   "Exception ClientAppException occurred. Message: boom'>")
    failed = SimpleNamespace(has_error=lambda: True, error=error)
    ok = SimpleNamespace(has_error=lambda: False)
    assert _failures([ok, failed]) == ["boom"]


def test_a_round_in_which_no_answering_client_holds_data_keeps_the_weights(monkeypatch, tmp_path):
    """Class-incremental with one class per site: in experiences holding neither site's class
    both sites train on nothing; FedAvg would divide by zero examples."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import compose
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose(["scenario=label_1", "num_clients=2", "model=mlp", "local_epochs=1", "rounds=5",
                   "continual.kind=class_incremental", "continual.experiences=5",
                   "continual.rounds_per_experience=1", "fraction_evaluate=0"])
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(CohortGrid(2, [CohortWorker(per_client=True)]), cfg, federated_data(cfg), recorder)
    empty = [r for r in recorder.rows if r["train"] == {} and r["round"] > 1]
    assert empty and all(r["failures"] == [] for r in recorder.rows)
    for row in empty:  # the weights did not move: the global numbers repeat the round before
        before = recorder.rows[row["round"] - 2]
        assert (row["accuracy"], row["loss"]) == (before["accuracy"], before["loss"])


class PullGrid:
    """A transport like Flower's: messages pushed, replies pulled a few at a time."""

    def __init__(self, nodes):
        self.nodes, self.pending = nodes, []

    def push_messages(self, messages):
        self.pending = [(i, m.metadata.dst_node_id) for i, m in enumerate(messages)]
        return [i for i, _ in self.pending]

    def pull_messages(self, ids):
        got, self.pending = self.pending[:1], self.pending[1:]  # one reply per pull
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i, src_node_id=n)) for i, n in got]


def test_the_live_line_hears_of_each_reply_as_it_is_pulled(monkeypatch):
    from fedcls.apps import federation

    monkeypatch.setattr(federation, "PULL_INTERVAL_S", 0.0)
    heard = []
    grid = SiteOrderedGrid(PullGrid([5, 6, 7]), {5: 0, 6: 1, 7: 2}, on_replies=heard.append)
    grid.traffic = NOT_COUNTED
    messages = [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for n in (7, 5, 6)]
    replies = grid.send_and_receive(messages)
    assert heard == [1, 2, 3] and [r.metadata.src_node_id for r in replies] == [5, 6, 7]
