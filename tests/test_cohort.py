"""The cohort executor trains many clients at once with the one loop's math: the same weights,
state and metrics as training each client alone (float32, unequal client sizes)."""

import copy

import pytest
import torch

from fedcls.algorithms.training import TrainParams, local_update
from fedcls.apps.cohort.train import CohortClient, cohort_blocker, cohort_update
from fedcls.data.federated import SiteTensors
from strategies.fedprox import ProximalTerm
from strategies.scaffold import ControlVariates

SIZES = (37, 64, 13)  # unequal: the clients finish at different steps


def site(n: int, seed: int, noise: float = 0.0) -> SiteTensors:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 6, 6), generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return SiteTensors(x, y, x[:2], y[:2], torch.tensor([noise]))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def hooks_for(kind: str, i: int, c: dict) -> list:
    if kind == "fedprox":
        return [ProximalTerm(0.1)]
    if kind == "scaffold":
        return [ControlVariates(c)]
    if kind == "scaffold_gradient":  # c - c_i through the gradient (the old string key "gradient_correction"
        return [ControlVariates(c, place="gradient")]  # never reached the cohort: it trained uncorrected)
    return []


def states(kind: str, net) -> list[dict]:
    if not kind.startswith("scaffold"):
        return [{} for _ in SIZES]
    gen = torch.Generator().manual_seed(3)  # earlier rounds' c_i (client 2: none yet)
    return [{"scaffold": {n: 0.1 * torch.randn(p.shape, generator=gen) for n, p in net.named_parameters()}},
            {"scaffold": {n: 0.1 * torch.randn(p.shape, generator=gen) for n, p in net.named_parameters()}}, {}]


@pytest.mark.parametrize("kind", ["fedavg", "fedprox", "scaffold", "scaffold_gradient"])
@pytest.mark.parametrize("momentum,weight_decay,noise", [(0.9, 1e-3, 0.0), (0.0, 0.0, 0.5)])
def test_a_cohort_gives_each_client_its_own_training(kind, momentum, weight_decay, noise):
    net = model()
    gen = torch.Generator().manual_seed(5)
    c = {n: 0.05 * torch.randn(p.shape, generator=gen) for n, p in net.named_parameters()}
    datas = [site(n, i, noise) for i, n in enumerate(SIZES)]
    params = [TrainParams(2, 16, 0.05, momentum, weight_decay, seed=100 + i) for i in range(len(SIZES))]
    alone = []
    for i, (data, p, state) in enumerate(zip(datas, params, states(kind, net))):
        m = copy.deepcopy(net)
        result = local_update(m, data, p, hooks_for(kind, i, c), copy.deepcopy(state))
        alone.append((m.state_dict(), result))
    clients = [CohortClient(d, p, hooks_for(kind, i, c), copy.deepcopy(s))
               for i, (d, p, s) in enumerate(zip(datas, params, states(kind, net)))]
    together = cohort_update(copy.deepcopy(net), clients)
    for (w_alone, r_alone), (w_cohort, r_cohort) in zip(alone, together):
        for key in w_alone:
            torch.testing.assert_close(w_cohort[key], w_alone[key], atol=1e-5, rtol=1e-5)
        assert r_cohort.metrics["num-steps"] == r_alone.metrics["num-steps"]
        assert r_cohort.metrics["train_loss"] == pytest.approx(r_alone.metrics["train_loss"], rel=1e-5)
        assert r_cohort.examples == r_alone.examples
        for name in r_alone.outbox:  # SCAFFOLD's delta c_i, and its new c_i in the state
            for key in r_alone.outbox[name]:
                torch.testing.assert_close(r_cohort.outbox[name][key], r_alone.outbox[name][key], atol=1e-4, rtol=1e-4)
        for key, value in r_alone.state.get("scaffold", {}).items():
            torch.testing.assert_close(r_cohort.state["scaffold"][key], value, atol=1e-4, rtol=1e-4)
    steps = [r.metrics["num-steps"] for _, r in together]
    assert steps == [6, 8, 2]  # 2 epochs of ceil(n / 16) batches each


def test_models_and_hooks_a_cohort_cannot_run_are_named():
    from fedcls.algorithms.training import Hook

    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert "BatchNorm" in cohort_blocker(bn, [])
    assert "dropout" in cohort_blocker(torch.nn.Sequential(torch.nn.Dropout(0.5)), [])
    assert "Hook has no cohort form" in cohort_blocker(model(), [Hook()])
    assert cohort_blocker(model(), [ProximalTerm(0.1), ControlVariates({})]) is None


def federate(cfg, workers, tmp_path):
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    recorder = Recorder(tmp_path / f"run{len(list(tmp_path.iterdir()))}", cfg, echo=lambda line: None)
    arrays = run_federation(CohortGrid(cfg.num_clients, workers, echo=lambda line: None), cfg, federated_data(cfg), recorder)
    return arrays.to_torch_state_dict(), recorder.rows


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold", "fednova"])
def test_two_rounds_in_cohorts_equal_the_per_client_path(strategy, monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.config import compose
    from strategy_helpers import identity

    identity(monkeypatch)
    torch.set_default_dtype(torch.float64)  # float32 would differ by rounding (batched vs single matmuls)
    cfg = compose([f"strategy={strategy}", "scenario=dirichlet_0.5", "dataset=synthetic", "data.synthetic.num_samples=800",
                   "num_clients=5", "rounds=2", "model=mlp", "local_epochs=2", "batch_size=16",
                   "momentum=0.9", "weight_decay=0.0005", "fraction_evaluate=0", "backend.cohort_size=2"])
    try:
        reference, ref_rows = federate(cfg, [CohortWorker(per_client=True)], tmp_path)
        cohort, rows = federate(cfg, [CohortWorker(), CohortWorker()], tmp_path)  # sites split over 2 workers
    finally:
        torch.set_default_dtype(torch.float32)
    assert reference["features.1.weight"].dtype == torch.float64
    for key in reference:
        torch.testing.assert_close(cohort[key], reference[key], atol=1e-10, rtol=1e-10)
    assert [r["accuracy"] for r in rows] == pytest.approx([r["accuracy"] for r in ref_rows], abs=2e-3)
    assert rows[-1]["trained"] == ref_rows[-1]["trained"] and len(rows[-1]["trained"]) == 5


def test_clients_a_cohort_cannot_hold_train_alone_with_one_notice(monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import compose
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose(["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "rounds=2",
                   "model=simple_cnn_bn", "fraction_evaluate=0"])
    lines = []
    grid = CohortGrid(3, [CohortWorker()], echo=lines.append)
    run_federation(grid, cfg, federated_data(cfg), Recorder(tmp_path / "run", cfg, echo=lambda line: None))
    assert len(lines) == 1 and "trains alone: BatchNorm keeps running statistics" in lines[0]


class DyingWorker:
    """A worker whose process is gone (as a Ray actor killed by the OOM killer answers)."""

    def process(self, items):
        raise RuntimeError("The actor died unexpectedly before finishing this task")


def test_a_dead_cohort_worker_fails_its_clients_once_then_is_replaced(monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import compose
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose(["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=4", "rounds=2",
                   "model=mlp", "fraction_evaluate=0"])
    workers = [CohortWorker(), CohortWorker()]
    grid = CohortGrid(4, workers, echo=lambda line: None, respawn=CohortWorker)
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    exchange = grid.send_and_receive  # kill worker 1, then let the exchange through
    calls = {"n": 0}

    def send(messages, timeout=None):
        calls["n"] += 1
        if calls["n"] == 1:  # the first training exchange (no roll call: the grid knows its sites)
            grid.workers[1] = DyingWorker()
        return exchange(messages, timeout)

    monkeypatch.setattr(grid, "send_and_receive", send)
    run_federation(grid, cfg, federated_data(cfg), recorder)
    first, second = recorder.rows
    assert sorted(s for s, _ in first["trained"]) == [0, 2] and len(first["faults"]["crashed"]) == 2
    assert "actor died" in first["failures"][0]
    assert sorted(s for s, _ in second["trained"]) == [0, 1, 2, 3] and isinstance(grid.workers[1], CohortWorker)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_pre_aggregating_in_the_actor_gives_the_strategy_the_same_mean(strategy, monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.config import compose
    from strategy_helpers import identity

    identity(monkeypatch)
    args = [f"strategy={strategy}", "scenario=dirichlet_0.5", "dataset=synthetic", "data.synthetic.num_samples=800",
            "num_clients=5", "rounds=2", "model=mlp", "local_epochs=1", "fraction_evaluate=0", "backend.cohort_size=3"]
    plain, plain_rows = federate(compose(args), [CohortWorker()], tmp_path)
    merged, rows = federate(compose([*args, "backend.pre_aggregate=true"]), [CohortWorker()], tmp_path)
    for key in plain:
        torch.testing.assert_close(merged[key], plain[key], atol=1e-6, rtol=1e-5)
    assert [r["trained"] for r in rows] == [r["trained"] for r in plain_rows]  # every client still counted
    assert [r["train"]["train_loss"] for r in rows] == pytest.approx([r["train"]["train_loss"] for r in plain_rows])


def test_pre_aggregation_sends_one_set_of_weights_per_cohort(monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedcls.apps.cohort.preaggregate import pre_aggregate
    from strategy_helpers import identity

    identity(monkeypatch)
    requests = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n + 1, message_type="train")
                for n in range(3)]
    replies = [Message(RecordDict({"arrays": ArrayRecord({"w": torch.tensor([float(v)])}),
                                   "metrics": MetricRecord({"num-examples": n, "train_loss": float(v), "site": float(s)})}),
                       reply_to=q) for s, (q, v, n) in enumerate(zip(requests, (1, 4, 10), (1, 2, 0)))]
    out = pre_aggregate(replies, requests)
    assert out[0].content["arrays"] is out[1].content["arrays"] is out[2].content["arrays"]
    assert out[0].content["arrays"]["w"].numpy().tolist() == [3.0]  # (1*1 + 2*4) / 3, by hand
    assert [float(m.content["metrics"]["num-examples"]) for m in out] == [3.0, 0.0, 0.0]
    assert float(out[0].content["metrics"]["train_loss"]) == 3.0
    assert [float(m.content["metrics"]["site"]) for m in out] == [0.0, 1.0, 2.0]
