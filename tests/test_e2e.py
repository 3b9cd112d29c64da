"""End-to-end: the real CLI, a real Flower simulation on Ray, real files."""

import json
import os

import pytest
import torch
import yaml

pytestmark = pytest.mark.e2e
SMALL = ["local_epochs=2", "lr=0.05", "rounds=2", "save_model=true"]


def run(cli, out, *args):
    result = cli(*SMALL, f"output_dir={out}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = out.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return result, run_dir, rows


def test_simulation_writes_every_file_and_learns(cli, tmp_path):
    result, run_dir, rows = run(cli, tmp_path, "scenario=dirichlet_0.5", "num_clients=3",
                                "strategy=fedprox", "run_id=e2e")
    assert run_dir.name == "e2e"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json",
                                                   "model.pt", "plots"}
    assert {p.name for p in (run_dir / "plots").iterdir()} == {f"{name}.{kind}" for kind in ("png", "pdf")
                                                               for name in ("accuracy", "partition", "traffic")}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["strategy"]["name"] == "fedprox"
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["failures"] for r in rows] == [[], []]
    for key in ("accuracy_mean", "accuracy_min", "accuracy_max"):
        assert 0 <= rows[-1]["clients"][key] <= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_accuracy"] == rows[-1]["accuracy"]
    assert summary["final_accuracy"] > 0.5  # chance is 0.1
    assert set(summary["versions"]) >= {"flwr", "torch", "ray"}
    assert len(summary["partition_counts"]) == 3 and sum(map(sum, summary["partition_counts"])) == 4000
    weights = torch.load(run_dir / "model.pt")
    assert "head.weight" in weights and weights["head.weight"].shape == (10, 84)
    assert "round   2/2" in result.stdout and "Traceback" not in result.stderr


def test_same_seed_gives_identical_rounds_alone_and_on_a_sweeps_reused_actors(cli, tmp_path):
    """A single FedAvg run, then one sweep of FedProx with mu=0 twice: its first run on the actors
    it started, its second on the actors the first one left warm (fedcls.engine.actor_reserve);
    then the same sweep on the inprocess executor, its two runs side by side (one actor each, the
    ClientApp called in it). Identical rounds show that a run is reproducible, that a sweep, its
    reused actors, the inprocess executor and runs side by side change no number, and that
    FedProx(mu=0) computes FedAvg's."""
    import subprocess
    import sys

    from conftest import ROOT

    args = ["scenario=label_2", "num_clients=4", "fraction_train=0.5", "seed=3"]
    single = run(cli, tmp_path / "single", *args)[2]
    keys = ("accuracy", "loss", "train", "clients")
    for study, executor in (("sweep", "clientapp"), ("side_by_side", "inprocess")):
        result = subprocess.run([sys.executable, "-m", "fedcls.sweep", f"output_dir={tmp_path / study}", *SMALL, *args,
                                 "strategy=fedprox", "strategy.proximal_mu=0,0.0", f"backend.executor={executor}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        swept = [[json.loads(line) for line in (tmp_path / study / "runs" / name / "metrics.jsonl").read_text().splitlines()]
                 for name in ("strategy.proximal_mu-0", "strategy.proximal_mu-0.0")]
        for rows in swept:
            assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in single], executor
    assert ("2 runs at a time" in result.stdout) == (os.cpu_count() >= 2), result.stdout
    assert all(r["sampled"] == 2 for r in single)


# Strategies with a client half of their own; the other Flower strategies differ only in server
# arithmetic, checked in-process (test_strategies.py). SCAFFOLD runs on Ray in the 100-client
# test below (cohort executor), FedBN with BatchNorm in tests/test_coral_e2e.py, FedProx in
# tests/test_continual_e2e.py. (q-FedAvg cannot take BatchNorm models: simple_cnn here.)
RAY_STRATEGIES = "fednova,feddyn,moon,qfedavg"  # FedAdam, Bulyan & co.: server arithmetic only


def test_strategies_complete_ray_runs_in_one_sweep(tmp_path):
    """One sweep (one Ray instance) runs each of these strategies for 2 rounds on 3 sites."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "fedcls.sweep", "name=strategies", f"output_dir={tmp_path}",
         f"strategy={RAY_STRATEGIES}", "model=simple_cnn", "num_clients=3", "local_epochs=1",
         "rounds=2", "lr=0.05", "save_model=false"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in RAY_STRATEGIES.split(","):
        run_dir = tmp_path / "runs" / f"strategy-{name}"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["failures"] for r in rows] == [[], []], name
        assert [sorted(s for s, _ in r["trained"]) for r in rows] == [[0, 1, 2], [0, 1, 2]], name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["final_accuracy"] is not None, name
        if name == "qfedavg":  # its client half: the received model's loss
            assert all(r["train"]["initial_loss"] > 0 for r in rows)


def test_hundred_clients_partial_participation_keeps_client_state(cli, tmp_path):
    """On the cohort executor: 2 Ray actors train cohorts of SCAFFOLD clients, whose c_i live in
    the actor serving the site (the ClientApp path keeps state on Ray in the continual tests;
    tests/test_cohort.py shows both paths give the same weights)."""
    _, _, rows = run(cli, tmp_path, "strategy=scaffold", "num_clients=100", "fraction_train=0.1",
                     "fraction_evaluate=0.1", "rounds=6", "local_epochs=1", "save_model=false",
                     "backend.executor=cohort", "backend.cohort_actors=2", "backend.cohort_size=4")
    seen: dict[int, int] = {}
    for r in rows:
        assert r["failures"] == [] and len(r["trained"]) == 10
        for site, times in r["trained"]:
            seen[site] = seen.get(site, 0) + 1
            assert times == seen[site]  # the client's state counted every round it trained, only those
    assert max(seen.values()) >= 2  # some site was sampled again after sitting rounds out

