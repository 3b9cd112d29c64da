"""Update compression (fedcls.algorithms.compression): hand-computed encodings, error feedback kept
in the site's state, the server's decoding, and what it saves on the wire in a real federation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fedcls.algorithms.compression import CompressionClient, CompressionServer, decode, encode
from fedcls.config import compose
from strategy_helpers import identity


def test_int8_is_symmetric_per_tensor_and_off_by_at_most_half_a_step():
    update = np.array([1.27, -0.5, 0.0, 0.333], np.float32)
    parts = encode("int8", update, 0.0)
    assert parts["scale"][0] == pytest.approx(0.01)  # max |u| / 127
    assert parts["i8"].tolist() == [127, -50, 0, 33]
    back = decode(parts, update.shape, np.float32)
    assert np.abs(back - update).max() <= 0.01 / 2 + 1e-7
    rng = np.random.default_rng(0)
    big = rng.normal(size=(64, 9)).astype(np.float32)
    scale = np.abs(big).max() / 127
    assert np.abs(decode(encode("int8", big, 0), big.shape, np.float32) - big).max() <= scale / 2 + 1e-6


def test_float16_and_topk_by_hand():
    update = np.array([0.1, -3.0, 2.0, 0.5], np.float32)
    assert decode(encode("float16", update, 0), (4,), np.float32).tolist() == pytest.approx(update.tolist(), rel=1e-3)
    parts = encode("topk", update, 0.5)  # keep ceil(0.5 * 4) = 2: the largest |u|
    assert parts["idx"].tolist() == [1, 2] and parts["val"].tolist() == [-3.0, 2.0]
    assert decode(parts, (2, 2), np.float32).tolist() == [[0.0, -3.0], [2.0, 0.0]]


def job_for(global_w, trained, state=None):
    msg = SimpleNamespace(content={"arrays": ArrayRecord({"w": Array(np.asarray(global_w, np.float32))})})
    return SimpleNamespace(msg=msg, state=state or {}, feature_state={}), {"w": torch.tensor(trained)}


def test_topk_error_feedback_keeps_what_was_left_out_and_sends_it_later():
    half = CompressionClient(compose(["compression.kind=topk", "compression.topk_fraction=0.5"]))
    job, weights = job_for([0, 0, 0, 0], [0.1, -3.0, 2.0, 0.5])
    sent, _ = half.outgoing(job, weights, {})
    assert sent["w@idx"].tolist() == [1, 2]
    residual = job.feature_state["compression"]["w"]
    assert residual.tolist() == pytest.approx([0.1, 0.0, 0.0, 0.5])  # what the site left out
    job2, weights2 = job_for([0, 0, 0, 0], [0.4, 0.0, 0.0, 0.0], state={"compression": {"w": residual}})
    sent2, _ = half.outgoing(job2, weights2, {})
    assert sent2["w@idx"].tolist() == [0, 3] and sent2["w@val"].tolist() == pytest.approx([0.5, 0.5])
    assert job2.feature_state["compression"]["w"].tolist() == pytest.approx([0, 0, 0, 0])
    off = CompressionClient(compose(["compression.kind=topk", "compression.topk_fraction=0.5",
                                     "compression.error_feedback=false"]))
    job3, weights3 = job_for([0, 0, 0, 0], [0.4, 0.3, 0.0, 0.0], state={"compression": {"w": residual}})
    assert off.outgoing(job3, weights3, {})[0]["w@idx"].tolist() == [0, 1] and job3.feature_state == {}
    job4, weights4 = job_for([0, 0, 0, 0], [0.4, 0.3, 0.0, 0.0], state={"compression": {"w": residual}})
    assert half.outgoing(job4, weights4, {})[0]["w@idx"].tolist() == [0, 3]  # with the residual: 0.5, 0.5


def test_the_server_decodes_replies_into_weights_and_leaves_malformed_ones_for_screening(monkeypatch):
    identity(monkeypatch)
    server = CompressionServer(compose(["compression.kind=int8"]))
    server.before_train(1, ArrayRecord({"w": Array(np.array([1.0, 1.0], np.float32)),
                                        "n": Array(np.array(3, np.int64))}), None, None)
    good = ArrayRecord({"w@i8": Array(np.array([127, -127], np.int8)), "w@scale": Array(np.array([0.5 / 127], np.float32)),
                        "n": Array(np.array(4, np.int64))})
    bad = ArrayRecord({"w@i8": Array(np.array([1, 2, 3], np.int8))})  # no scale: cannot decode
    replies = [Message(RecordDict({"arrays": r}), dst_node_id=1, message_type="train") for r in (good, bad)]
    decoded = server.arrived(1, replies, {}, 0.0)
    assert list(decoded[0].content["arrays"].keys()) == ["w", "n"]
    assert decoded[0].content["arrays"]["w"].numpy().tolist() == pytest.approx([1.5, 0.5])  # 1 +- 127 * 0.5/127
    assert list(decoded[1].content["arrays"].keys()) == ["w@i8"]  # screening refuses the unexpected array


SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "rounds=2", "save_model=false", "tracking.tensorboard=false", "checkpoint_every=0"]


def federate(tmp_path, *args):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    cfg = compose([*SMALL, *args])
    recorder = Recorder(tmp_path / "_".join(args or ["none"]), cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg,
                   federated_data(cfg), recorder)
    return recorder.rows


def test_compressed_replies_are_smaller_on_the_wire_and_still_train(tmp_path, monkeypatch):
    identity(monkeypatch)
    plain = federate(tmp_path)
    runs = {kind: federate(tmp_path, f"compression.kind={kind}") for kind in ("float16", "int8", "topk")}
    back = {kind: rows[0]["bytes"]["from_sites"] / plain[0]["bytes"]["from_sites"] for kind, rows in runs.items()}
    assert 0.45 < back["float16"] < 0.55 and 0.2 < back["int8"] < 0.3 and back["topk"] < 0.05
    for kind, rows in runs.items():
        assert all(not r["failures"] for r in rows), kind  # every reply decoded and passed screening
        # the global model goes out whole (the config in each message names the compression: a few bytes)
        assert rows[0]["bytes"]["to_sites"] == pytest.approx(plain[0]["bytes"]["to_sites"], abs=200)
    assert runs["int8"][-1]["accuracy"] == pytest.approx(plain[-1]["accuracy"], abs=0.05)
    no_feedback = federate(tmp_path, "compression.kind=topk", "compression.error_feedback=false")
    assert no_feedback[0]["accuracy"] == runs["topk"][0]["accuracy"]  # round 1: no residual yet
    assert no_feedback[1]["loss"] != runs["topk"][1]["loss"]  # round 2: the kept residual was sent


def test_compression_refuses_pre_aggregation():
    from fedcls.errors import ConfigError

    with pytest.raises(ConfigError, match="set backend.pre_aggregate=false"):
        compose(["compression.kind=int8", "backend.executor=cohort", "backend.pre_aggregate=true"])
