"""Continual runs end to end: the real CLI, a Flower simulation on Ray, Avalanche at the sites."""

import json

import pytest
import torch

from fedcls.algorithms.continual.streams import global_test_sets, site_stream, tensor_dataset
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import batches
from fedcls.apps.client_app import round_seed
from fedcls.config import compose
from fedcls.data.federated import federated_data

pytestmark = pytest.mark.e2e
ANCHOR = ["scenario=continual_classes", "num_clients=1", "partition.kind=iid", "rounds=5",
          "continual.rounds_per_experience=1", "local_epochs=4", "continual.ewc_lambda=5",
          "model=mlp", "lr=0.05", "momentum=0.9", "fraction_evaluate=0", "save_model=true"]


def run(cli, out, *args):
    result = cli(f"output_dir={out}", "run_id=r", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "r" / "summary.json").read_text())


class SameBatches:
    """A batch sampler yielding, epoch after epoch, the batches fedcls's loop draws in a round."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.gen = n, batch_size, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter([b.tolist() for b in batches(self.n, self.batch_size, self.gen)])

    def __len__(self):
        return -(-self.n // self.batch_size)


def avalanche_ewc(cfg: dict) -> tuple[list[list[float]], dict]:
    """Avalanche's own EWC strategy, centrally, on the one site's stream: same data, initial
    weights, optimiser (reset per experience, as each round's is in fedcls), batches, epochs."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import EWC
    from avalanche.training.plugins import EvaluationPlugin
    from torch.utils.data import DataLoader

    data = federated_data(cfg)
    stream = site_stream(cfg, data, 0, torch.device("cpu"))
    tests = [tensor_dataset(x, y, task_labels=0) for x, y in global_test_sets(cfg, data)]
    bench = benchmark_from_datasets(train=[e.dataset for e in stream.scenario.train_stream], test=tests)
    torch.set_num_threads(1)  # as in a client actor (backend.num_cpus=1): the same float sums
    torch.manual_seed(cfg.seed)  # fedcls's initial global weights
    model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes)

    class SameOrderEWC(EWC):
        def make_train_dataloader(self, **kwargs):
            exp = self.experience.current_experience
            sampler = SameBatches(len(self.adapted_dataset), self.train_mb_size, round_seed(cfg, exp + 1, 0))
            self.dataloader = DataLoader(self.adapted_dataset, batch_sampler=sampler)

        def make_optimizer(self, **kwargs):
            super().make_optimizer(**{**kwargs, "reset_optimizer_state": True})

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    strategy = SameOrderEWC(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                            ewc_lambda=cfg.continual.ewc_lambda, train_mb_size=cfg.batch_size,
                            train_epochs=cfg.local_epochs, eval_mb_size=1024,
                            evaluator=EvaluationPlugin(accuracy_metrics(experience=True)))
    matrix = []
    for exp in bench.train_stream:
        strategy.train(exp)
        results = strategy.eval(bench.test_stream)
        matrix.append([results[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{j:03d}"]
                       for j in range(len(tests))])
    return matrix, model.state_dict()


def test_one_site_ewc_matches_avalanches_central_ewc(cli, tmp_path):
    """Correctness anchor: 1 client, IID, full participation, one round per experience."""
    _, summary = run(cli, tmp_path, *ANCHOR)
    expected, weights = avalanche_ewc(compose(ANCHOR))
    assert len(summary["accuracy_matrix"]) == 5
    # FedAvg of one client rescales by n/n: float rounding apart, the runs are the same
    gaps = [abs(a - b) for r, s in zip(summary["accuracy_matrix"], expected) for a, b in zip(r, s)]
    assert max(gaps) <= 0.01, (summary["accuracy_matrix"], expected)
    assert min(expected[j][j] for j in range(5)) > 0.9  # every experience was learned
    ours = torch.load(tmp_path / "r" / "model.pt")
    gap = max(float((ours[k] - w).abs().max()) for k, w in weights.items())
    _, naive = avalanche_ewc(compose([*ANCHOR, "continual.ewc_lambda=0"]))
    naive_gap = max(float((naive[k] - w).abs().max()) for k, w in weights.items())
    # the same weights up to float noise over 80 steps (0.02 measured); without the penalty: ~14
    assert gap < naive_gap / 100, (gap, naive_gap)


def test_staggered_late_site_with_ewc_replay_and_fedprox(cli, tmp_path):
    """Sites reach experiences at different rounds, one joins late; EWC + replay compose with
    FedProx; the federation's importances go round; the continual metrics are written."""
    rows, summary = run(cli, tmp_path, "scenario=continual_domains", "num_clients=4",
                        "continual.experiences=3", "continual.rounds_per_experience=2",
                        "continual.schedule=staggered", "continual.stagger=1", "rounds=7",
                        "continual.late_sites=1", "continual.join_round=3", "local_epochs=1",
                        "continual.method=ewc+replay", "continual.aggregate_importances=true",
                        "continual.memory_size=60", "strategy=fedprox", "model=mlp", "lr=0.05",
                        "save_model=false")
    trained = [{site for site, _ in r["trained"]} for r in rows]
    assert trained[:2] == [{0, 1, 2}] * 2 and all(t == {0, 1, 2, 3} for t in trained[2:])
    # site 3 (lag 1, late) trains from round 3 on
    participations = {site: n for r in rows for site, n in r["trained"]}
    assert participations == {0: 7, 1: 7, 2: 7, 3: 5}
    assert [r["experience"] for r in rows] == [0, 0, 1, 1, 2, 2, 2]
    assert summary["continual"]["experience_end_rounds"] == [3, 5, 7]
    assert len(summary["accuracy_matrix"]) == 3 and all(len(r) == 3 for r in summary["accuracy_matrix"])
    assert summary["bwt"] == pytest.approx(-summary["forgetting"])
    assert rows[-1]["train"]["replay_memory"] > 0
    assert summary["accuracy_matrix"][0][0] > 0.5
    # sites 0-2 close experience 0 in round 3 and send its importances; experience 1 in round 5
    assert [r["federated_importances"] for r in rows] == [[], [], [0], [0], [0, 1], [0, 1], [0, 1]]
    assert all(r["failures"] == [] for r in rows)
    plots = {p.name for p in (tmp_path / "r" / "plots").iterdir()}
    assert {"accuracy_matrix.png", "experiences.png"} <= plots

