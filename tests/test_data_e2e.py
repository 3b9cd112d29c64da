"""End-to-end on the new sources: the real CLI, a real Flower simulation on Ray, two rounds each,
on fixture files in MedMNIST's .npz layout and a Hugging Face parquet dataset (no network)."""

import json

import pytest

from data_fixtures import HOSPITALS, write_hf_parquet, write_medmnist

pytestmark = pytest.mark.e2e


def run(cli, out, *args):
    result = cli("rounds=2", "local_epochs=2", "lr=0.05", f"output_dir={out}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = out.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, rows, json.loads((run_dir / "summary.json").read_text())


def test_medmnist_hospitals_runs_on_pathmnist_files(cli, tmp_path):
    write_medmnist(tmp_path / "data", counts=(360, 30, 90))
    run_dir, rows, summary = run(cli, tmp_path / "out", "scenario=medmnist_hospitals", f"data.root={tmp_path / 'data'}",
                                 "data.download=false", "num_clients=4", "domain.targets=[3]")
    assert [r["round"] for r in rows] == [1, 2] and [r["failures"] for r in rows] == [[], []]
    assert "target_accuracy" in rows[-1] and summary["status"] == "completed"
    assert sum(map(sum, summary["partition_counts"])) == 360  # the official train split, shared out


def test_a_hugging_face_dataset_federated_by_its_own_hospitals(cli, tmp_path):
    folder = write_hf_parquet(tmp_path / "hospitals")
    run_dir, rows, summary = run(cli, tmp_path / "out", f"dataset=hf:{folder}", f"data.root={tmp_path / 'data'}",
                                 "partition.kind=natural", "partition.id_column=hospital",
                                 f"num_clients={len(HOSPITALS)}", "model=mlp")
    assert [r["round"] for r in rows] == [1, 2] and [r["failures"] for r in rows] == [[], []]
    assert summary["status"] == "completed" and sum(map(sum, summary["partition_counts"])) == 240
    assert summary["site_names"] == sorted(HOSPITALS)  # site i holds the i-th hospital's rows
    assert rows[-1]["accuracy"] > 0.5  # four classes: chance is 0.25
