"""The server screens every training reply (fedcls.apps.screening): each attack of issue 16 on one
site is rejected naming the site, and the honest sites' run goes on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedcls.apps.screening import ReplyScreen
from fedcls.config import compose
from fedcls.data.federated import federated_data
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "fraction_evaluate=0", "save_model=false", "checkpoint_every=0"]
NODES = {10: 0, 11: 1, 12: 2}


def _setup(args: list[str] = ()):
    from fedcls.apps.federation import global_evaluator, site_local_keys

    cfg = compose([*SMALL, *args])
    data = federated_data(cfg)
    initial = global_evaluator(cfg, data.dataset)[0]
    return cfg, data, initial, ReplyScreen(cfg, data, initial, site_local_keys(cfg, data.dataset))


def _reply(request: Message, weights: dict, examples: float, **metrics) -> Message:
    return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(
        {"num-examples": examples, "train_loss": 0.5, **metrics})}), reply_to=request)


ATTACKS = {
    "examples 10**12": (lambda w: w, 1e12, "num-examples=1e+12 is not a whole number in [0, "),
    "negative examples": (lambda w: w, -2000.0, "num-examples=-2000 is not a whole number"),
    "fractional examples": (lambda w: w, 10.5, "num-examples=10.5"),
    "shape (1,)": (lambda w: {**w, "head.weight": torch.zeros(1)}, 10.0, "array 'head.weight' is float32[1]"),
    "shape (3, 3)": (lambda w: {**w, "head.bias": torch.zeros(3, 3)}, 10.0, "array 'head.bias' is float32[3, 3]"),
    "extra array": (lambda w: {**w, "backdoor": torch.zeros(2)}, 10.0, "unexpected arrays ['backdoor']"),
    "missing array": (lambda w: {k: v for k, v in w.items() if k != "head.bias"}, 10.0, "missing arrays ['head.bias']"),
    "dtype": (lambda w: {k: v.double() for k, v in w.items()}, 10.0, "float64"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_malformed_reply_is_rejected_naming_the_site_and_the_reason(attack, monkeypatch):
    identity(monkeypatch)
    _, _, initial, screen = _setup()
    corrupt, examples, why = ATTACKS[attack]
    honest = initial.to_torch_state_dict()
    sent = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in NODES]
    replies = [_reply(sent[0], honest, 10.0), _reply(sent[1], corrupt(honest), examples),
               _reply(sent[2], honest, 10.0)]
    screened = screen.screen(sent, replies, NODES, initial)
    assert screened.failed["rejected"] == [1] and [s for s, _ in screened.rejected] == [1]
    assert why in screened.rejected[0][1]
    assert screened.usable == [replies[0], replies[2]]


def test_non_finite_metrics_and_weights_are_rejected(monkeypatch):
    identity(monkeypatch)
    _, _, initial, screen = _setup()
    honest = initial.to_torch_state_dict()
    sent = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in NODES]
    poisoned = {k: torch.full_like(v, math.nan) for k, v in honest.items()}
    replies = [_reply(sent[0], honest, 10.0, train_loss=math.inf), _reply(sent[1], poisoned, 10.0),
               _reply(sent[2], honest, 10.0)]
    screened = screen.screen(sent, replies, NODES, initial)
    assert screened.failed["non_finite"] == [1] and screened.failed["rejected"] == [0]
    assert "metric 'train_loss' is not a finite number" in screened.rejected[0][1]


def test_norm_screening_rejects_an_update_far_longer_than_the_rounds_median(monkeypatch):
    identity(monkeypatch)
    _, _, initial, _ = _setup()
    honest = initial.to_torch_state_dict()
    sent = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in NODES]
    moved = [{k: v + 0.01 * (i + 1) for k, v in honest.items()} for i in range(2)]
    huge = {k: v + 1e30 for k, v in honest.items()}  # finite, but it would own the mean
    replies = [_reply(sent[0], moved[0], 10.0), _reply(sent[1], huge, 10.0), _reply(sent[2], moved[1], 10.0)]
    for ratio, rejected in ((0.0, []), (5.0, [1])):
        _, _, initial, screen = _setup([f"screening.norm_ratio={ratio}"])
        assert screen.screen(sent, replies, NODES, initial).failed["rejected"] == rejected


def test_fedbn_replies_may_keep_their_batchnorm_at_the_site(monkeypatch):
    identity(monkeypatch)
    _, _, initial, screen = _setup(["strategy=fedbn", "model=simple_cnn_bn"])
    assert any("running_mean" in k for k in screen.site_local_keys)
    weights = {k: v for k, v in initial.to_torch_state_dict().items() if k not in screen.site_local_keys}
    sent = [Message(RecordDict(), dst_node_id=10, message_type="train")]
    assert screen.screen(sent, [_reply(sent[0], weights, 10.0)], {10: 0}, initial).rejected == []


class Malicious:
    """A cohort worker whose site 1 answers with 10**12 examples and random weights (the attack of
    issue 16 that took FedAvg to chance)."""

    def __init__(self, worker):
        self.worker = worker

    def process(self, items):
        replies, notices = self.worker.process(items)
        out = []
        for (site, msg), reply in zip(items, replies):
            if site == 1 and msg.metadata.message_type == "train" and not reply.has_error():
                weights = {k: torch.randn_like(v) if v.is_floating_point() else v
                           for k, v in reply.content["arrays"].to_torch_state_dict().items()}
                reply = _reply(msg, weights, 1e12)
            out.append(reply)
        return out, notices


def test_one_malicious_site_among_three_is_named_every_round_and_fedavg_keeps_its_accuracy(monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose([*SMALL, "rounds=5", "data.synthetic.num_samples=1500", "lr=0.05", "local_epochs=2"])
    rows = {}
    for name, worker in (("honest", CohortWorker(per_client=True)), ("attacked", Malicious(CohortWorker(per_client=True)))):
        grid = CohortGrid(3, [worker], echo=lambda line: None)
        recorder = Recorder(tmp_path / name, cfg, echo=lambda line: None)
        run_federation(grid, cfg, federated_data(cfg), recorder)
        rows[name] = recorder.rows
    assert all(r["faults"]["rejected"] == [1] for r in rows["attacked"])
    assert all(any("site 1 rejected: num-examples=1e+12" in f for f in r["failures"]) for r in rows["attacked"])
    assert abs(rows["attacked"][-1]["accuracy"] - rows["honest"][-1]["accuracy"]) <= 0.02
    summary = json.loads((tmp_path / "attacked" / "summary.json").read_text())  # strict JSON
    assert summary["status"] != "failed" and np.isfinite(summary["final_loss"])
