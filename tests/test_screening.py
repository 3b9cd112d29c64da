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


REASONS = {  # what the server says of each attack (fedcls.apps.faults.malicious)
    "huge_count": "num-examples=1e+12 is not a whole number", "negative_count": "num-examples=-2000",
    "tiny_shape": "is float32[1], the model's is", "wrong_shape": "is float32[3, 3], the model's is",
    "extra_key": "unexpected arrays ['backdoor.weight']", "missing_key": "missing arrays",
    "huge_weights": "update norm", "boosted": "update norm",
    "bad_metric": "metric 'train_loss' is not a finite number", "impostor": "claims to be site 2",
}


def test_a_byzantine_site_is_named_every_round_whatever_it_sends_and_fedavg_keeps_its_accuracy(monkeypatch, tmp_path):
    """Through the real ClientApp (the cohort worker runs its train function per site): site 1
    sends each attack of fedcls.apps.faults in turn, one per round."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from fedcls.schema import BYZANTINE_ATTACKS

    identity(monkeypatch)
    base = [*SMALL, f"rounds={len(BYZANTINE_ATTACKS)}", "data.synthetic.num_samples=1500", "lr=0.05",
            "faults.min_train_nodes=2"]
    rows = {}
    for name, extra in (("attacked", ["faults.byzantine_site=1"]), ("honest", [])):
        cfg = compose([*base, *extra])
        recorder = Recorder(tmp_path / name, cfg, echo=lambda line: None)
        run_federation(CohortGrid(3, [CohortWorker(per_client=True)], echo=lambda line: None), cfg,
                       federated_data(cfg), recorder)
        rows[name] = recorder.rows
    for attack, row in zip(BYZANTINE_ATTACKS, rows["attacked"]):
        assert row["faults"]["rejected"] == [1] and sorted(s for s, _ in row["trained"]) == [0, 2], attack
        assert any(f.startswith("site 1 rejected: ") and REASONS[attack] in f for f in row["failures"]), (attack, row["failures"])
    assert abs(rows["attacked"][-1]["accuracy"] - rows["honest"][-1]["accuracy"]) <= 0.02
    summary = json.loads((tmp_path / "attacked" / "summary.json").read_text())  # strict JSON
    assert summary["status"] != "failed" and np.isfinite(summary["final_loss"])


def test_the_roll_call_declares_each_sites_training_samples_and_bounds_its_claims(monkeypatch):
    from flwr.app import ConfigRecord, Context

    from fedcls.apps import client_app
    from fedcls.apps.federation import check_roster
    from fedcls.apps.payload import CONFIG_KEY, Payload
    from fedcls.errors import ConfigError

    identity(monkeypatch)
    cfg, data, initial, _ = _setup()
    ask = Message(RecordDict({"config": ConfigRecord({CONFIG_KEY: Payload(cfg).to_json()})}), dst_node_id=1,
                  message_type="query")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    answer = client_app.query(ask, context).content["site"]
    assert answer[client_app.SITE_KEY] == 2 and answer[client_app.EXAMPLES_KEY] == len(data.sites[2].train_idx)
    declared = {0: 5, 1: 7, 2: 9}
    for cap, bounds in ((0, declared), (6, {0: 5, 1: 6, 2: 6})):
        screen = ReplyScreen(compose([*SMALL, f"screening.max_examples={cap}"]), data, initial, set(), declared)
        assert screen.max_examples == bounds
    sent = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in NODES]
    honest = initial.to_torch_state_dict()
    screened = screen.screen(sent, [_reply(m, honest, n) for m, n in zip(sent, (5.0, 7.0, 6.0))], NODES, initial)
    assert screened.failed["rejected"] == [1] and "num-examples=7 is not a whole number in [0, 6]" in screened.rejected[0][1]
    with pytest.raises(ConfigError, match=r"site\(s\) \[1\] are each served by more than one node"):
        check_roster({10: 0, 11: 1, 12: 1}, 3)
