import csv
import json
import statistics

import pytest
import yaml

from fedcls.config import compose
from fedcls.report import main as report_main
from fedcls.report import report
from fedcls.sweep import expand_grid, run_id_of


def fake_run(study, strategy, scenario, seed, curve):
    """A run folder as fedcls writes it (config.yaml, metrics.jsonl, summary.json)."""
    cfg = compose([f"scenario={scenario}", f"strategy={strategy}", f"seed={seed}"])
    run_dir = study / "runs" / f"{scenario}-{strategy}-{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"round": i + 1, "accuracy": a}) + "\n" for i, a in enumerate(curve)))
    (run_dir / "summary.json").write_text(json.dumps({
        "status": "completed", "final_accuracy": curve[-1], "partition_counts": [[5, 5], [10, 0]]}))


CURVES = {
    ("fedavg", "iid"): [[0.5, 0.92, 0.95], [0.6, 0.89, 0.93], [0.7, 0.91, 0.97]],
    ("fedavg", "label_2"): [[0.2, 0.5, 0.7], [0.3, 0.6, 0.8], [0.1, 0.4, 0.6]],
    ("fedprox", "iid"): [[0.5, 0.8, 0.91], [0.6, 0.9, 0.96], [0.6, 0.85, 0.94]],
    ("fedprox", "label_2"): [[0.3, 0.6, 0.75], [0.2, 0.5, 0.65], [0.3, 0.55, 0.7]],
}


@pytest.fixture
def study(tmp_path):
    for (strategy, scenario), curves in CURVES.items():
        for seed, curve in enumerate(curves):
            fake_run(tmp_path, strategy, scenario, seed, curve)
    bad = tmp_path / "runs" / "interrupted"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps({"status": "interrupted", "final_accuracy": 0.1}))
    return tmp_path


def test_report_cells_equal_the_runs_summaries(study):
    cells = report(study, target=0.9)
    finals = [json.loads((study / "runs" / f"label_2-fedprox-{s}" / "summary.json").read_text())
              ["final_accuracy"] for s in range(3)]
    cell = cells[("fedprox", "label_2")]
    assert cell.mean == pytest.approx(statistics.fmean(finals))  # 0.70
    assert cell.std == pytest.approx(statistics.stdev(finals))  # 0.05
    assert "| fedprox | 93.7 ± 2.5 | 70.0 ± 5.0 |" in (study / "table.md").read_text()
    rows = {(r["strategy"], r["scenario"]): r for r in csv.DictReader((study / "table.csv").open())}
    assert float(rows[("fedprox", "label_2")]["accuracy_mean"]) == pytest.approx(0.70)
    # degradation: iid mean 0.95 - label_2 mean 0.70 = 25 points for fedavg
    assert float(rows[("fedavg", "label_2")]["degradation_points"]) == pytest.approx(25.0)
    # rounds to 0.9: fedavg iid seeds reach it at rounds 2, 3, 2 -> 2.33; label_2 never
    assert float(rows[("fedavg", "iid")]["rounds_to_target"]) == pytest.approx(7 / 3)
    assert rows[("fedavg", "label_2")]["rounds_to_target"] == ""


def test_report_writes_booktabs_latex_and_plots(study):
    report(study)
    tex = (study / "table.tex").read_text()
    assert tex.startswith("\\begin{tabular}{lcc}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert "label\\_2" in tex and "$\\pm$" in tex
    plots = {p.name for p in (study / "plots").iterdir()}
    assert plots == {"accuracy_iid.png", "accuracy_label_2.png", "degradation.png",
                     "partition_iid.png", "partition_label_2.png"}


def test_report_of_an_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert report_main([str(tmp_path)]) == 2
    assert "run python -m fedcls.sweep first" in capsys.readouterr().err


def test_sweep_grid_is_the_product_of_comma_lists():
    fixed, common, points = expand_grid(["name=s", "strategy=fedavg,fedprox", "seed=range(0,3)", "rounds=5"])
    assert fixed == {"name": "s"} and common == ["rounds=5"]
    assert len(points) == 6 and points[0] == ["strategy=fedavg", "seed=0"]
    assert run_id_of(points[-1]) == "strategy-fedprox_seed-2"


def fake_site_run(study, args, seed, summary):
    """A completed run with extra summary keys (continual metrics, target accuracy)."""
    cfg = compose([*args, f"seed={seed}"])
    run_dir = study / "runs" / f"{'_'.join(args)}-{seed}".replace("=", "-")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": 0.5}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "final_accuracy": 0.5,
                                                      "partition_counts": [[1]], **summary}))


def test_continual_and_target_tables_average_the_runs_summaries(tmp_path):
    for seed, (avg, forget) in enumerate([(0.4, 0.3), (0.6, 0.1)]):
        fake_site_run(tmp_path, ["scenario=continual_classes", "continual.method=replay"], seed,
                      {"average_accuracy": avg, "forgetting": forget, "bwt": -forget, "accuracy_matrix": [[1]]})
    for seed, target in enumerate([0.3, 0.5, 0.7]):
        fake_site_run(tmp_path, ["scenario=hospitals", "coral.enabled=true"], seed,
                      {"target_accuracy": target, "sources": [0, 1], "site_accuracy": {"0": 0.9, "1": 0.8, "4": target}})
    report(tmp_path)
    continual = (tmp_path / "table_continual.md").read_text()
    assert "| continual_classes | replay | 50.0 ± 14.1 | 20.0 ± 14.1 | -20.0 ± 14.1 |" in continual
    targets = (tmp_path / "table_targets.md").read_text()
    assert "| hospitals | fedavg + CORAL (lambda 10, target) | 50.0 ± 20.0 | 85.0 ± 0.0 | 50.0 ± 0.0 |" in targets
    rows = list(csv.DictReader((tmp_path / "table_targets.csv").open()))
    assert float(rows[0]["target_accuracy_mean"]) == pytest.approx(0.5) and rows[0]["seeds"] == "3"
