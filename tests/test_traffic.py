"""Bytes on the wire (fedcls.apps.traffic): each message at its protobuf size, counted per round."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedcls.apps.traffic import Traffic, wire_bytes
from fedcls.config import compose
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "rounds=2", "save_model=false", "tracking.tensorboard=false"]


def test_a_message_costs_its_arrays_bytes_plus_a_little_framing(monkeypatch):
    identity(monkeypatch)
    config = ConfigRecord({"lr": 0.1})
    bare = Message(RecordDict({"config": config}), dst_node_id=7, message_type="train")
    weights = ArrayRecord({"w": Array(np.zeros(100, np.float32))})
    full = Message(RecordDict({"config": config, "arrays": weights}), dst_node_id=7, message_type="train")
    extra = wire_bytes(full) - wire_bytes(bare)
    # 100 float32 = 400 bytes, stored as .npy (Flower's numpy stype: a 128-byte header), plus keys, dtype,
    # stype, shape and lengths
    assert len(weights["w"].data) == 400 + 128 and 528 <= extra <= 528 + 64
    traffic = Traffic()
    traffic.count([full, bare], [bare])
    assert traffic.take() == {"to_sites": wire_bytes(full) + wire_bytes(bare), "from_sites": wire_bytes(bare)}
    assert traffic.take() == {"to_sites": 0, "from_sites": 0}


def test_each_round_records_the_bytes_of_every_message_it_sent_and_received(tmp_path, monkeypatch):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    seen = []

    class Listening(CohortGrid):
        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            replies = super().send_and_receive(messages, timeout)
            seen.append((messages, replies))
            return replies

    cfg = compose(SMALL)
    data = federated_data(cfg)
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    arrays = run_federation(Listening(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg, data, recorder)
    rounds = seen  # no roll call: the cohort grid knows its sites (a roll call would not count either)
    per_round = [rounds[i:i + 2] for i in (0, 2)]  # training, then evaluation, in each round
    for row, calls in zip(recorder.rows, per_round):
        assert row["bytes"] == {"to_sites": sum(wire_bytes(m) for sent, _ in calls for m in sent),
                                "from_sites": sum(wire_bytes(m) for _, got in calls for m in got)}
    model_bytes = sum(a.numpy().nbytes for a in arrays.values())  # the mlp's float32 weights
    for row in recorder.rows:  # the model goes to 3 sites to train and to 3 to evaluate; 3 come back
        assert 6 * model_bytes < row["bytes"]["to_sites"] < 6 * model_bytes * 1.05
        assert 3 * model_bytes < row["bytes"]["from_sites"] < 3 * model_bytes * 1.05
    summary = recorder.write_summary("completed")
    assert summary["bytes"]["to_sites"] == sum(r["bytes"]["to_sites"] for r in recorder.rows)
