import csv
import json
import statistics

import pytest
import yaml

from fedcls.config import compose
from fedcls.studies.report import main as report_main
from fedcls.studies.report import report
from fedcls.studies.sweep import expand_grid, run_id_of


def fake_run(study, strategy, scenario, seed, curve):
    """A run folder as fedcls writes it (config.yaml, metrics.jsonl, summary.json)."""
    cfg = compose([f"scenario={scenario}", f"strategy={strategy}", f"seed={seed}"])
    run_dir = study / "runs" / f"{scenario}-{strategy}-{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
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
    assert plots == {f"{name}.{kind}" for name in ("accuracy_iid", "accuracy_label_2", "degradation", "partition_iid",
                                                   "partition_label_2") for kind in ("png", "pdf")}


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
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
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


def test_degradation_error_bar_is_the_std_of_the_difference(study):
    from fedcls.outputs.plots import difference_std

    cells = report(study)
    # fedavg: std over seeds of iid (0.95, 0.93, 0.97) = 0.02, of label_2 (0.7, 0.8, 0.6) = 0.1
    assert difference_std(cells, "fedavg", "label_2") == pytest.approx(100 * (0.02 ** 2 + 0.1 ** 2) ** 0.5)
    assert difference_std(cells, "fedavg", "noise_0.1") == 0.0  # no such runs


def test_a_tuning_study_gets_a_row_per_setting_and_study_json_keeps_every_sweep(tmp_path):
    from fedcls.studies.sweep import record_study

    for k, (eta, final) in enumerate([(0.01, 0.9), (0.1, 0.7)]):
        cfg = compose(["scenario=iid", "strategy=fedadam", f"strategy.eta={eta}"])
        run_dir = tmp_path / "runs" / f"eta-{eta}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": final}) + "\n")
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "final_accuracy": final}))
        record_study(tmp_path, f"sweep {k}", [f"eta-{eta}"])
    fake_run(tmp_path, "fedavg", "iid", 0, [0.8])
    record_study(tmp_path, "sweep 2", ["iid-fedavg-0"])
    listed = json.loads((tmp_path / "study.json").read_text())
    assert listed == {"commands": ["sweep 0", "sweep 1", "sweep 2"],
                      "runs": ["eta-0.01", "eta-0.1", "iid-fedavg-0"]}
    cells = report(tmp_path)
    assert {s: round(c.mean, 2) for (s, _), c in cells.items()} == {
        "fedadam (eta=0.01)": 0.9, "fedadam (eta=0.1)": 0.7, "fedavg": 0.8}


def test_a_sweep_refuses_to_skip_finished_runs_of_another_config(tmp_path, capsys):
    """Run ids name only the swept keys: strategy=fedyogi strategy.eta=0.01 after strategy=fedadam
    strategy.eta=0.01 in the same study would reuse fedadam's finished run; the sweep refuses."""
    from fedcls.studies.sweep import main as sweep_main
    from fedcls.studies.sweep import refuse_collisions

    run_dir = tmp_path / "runs" / "strategy.eta-0.01"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(compose(["strategy=fedadam", "strategy.eta=0.01"]).to_dict()))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    refuse_collisions(["strategy=fedadam"], [["strategy.eta=0.01"]], tmp_path / "runs")  # same run: fine
    args = [f"output_dir={tmp_path}", "strategy=fedyogi", "strategy.eta=0.01,0.1"]
    assert sweep_main(args) == 2
    assert "strategy=choice(fedyogi)" in capsys.readouterr().err


def test_a_grid_that_names_one_run_twice_is_refused_before_ray(tmp_path, capsys):
    """0.0 and 0.00 parse to one value: the second run would be the first one again."""
    from fedcls.studies.sweep import main as sweep_main

    assert sweep_main([f"output_dir={tmp_path}", "strategy=fedprox", "strategy.proximal_mu=0.0,0.00,0.1"]) == 2
    assert "names run strategy.proximal_mu-0.0 more than once" in capsys.readouterr().err
    assert sweep_main([f"output_dir={tmp_path}", "seed=1,2,1"]) == 2
    assert "names run seed-1 more than once" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_study_list_or_unreadable_runs_give_one_line_not_a_traceback(tmp_path, capsys):
    for seed in range(3):
        fake_run(tmp_path, "fedavg", "iid", seed, [0.5, 0.9])
    good, torn, empty = (tmp_path / "runs" / f"iid-fedavg-{seed}" for seed in range(3))
    (tmp_path / "study.json").write_text("{half")
    assert report_main([str(tmp_path)]) == 2
    assert "study.json is not a study list" in capsys.readouterr().err
    (tmp_path / "study.json").write_text(json.dumps({"runs": [good.name, torn.name, empty.name]}))
    (torn / "metrics.jsonl").write_text((good / "metrics.jsonl").read_text()[:-10])  # half a line
    summary = json.loads((empty / "summary.json").read_text())
    (empty / "summary.json").write_text(json.dumps({**summary, "final_accuracy": None}))
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"left out 2 unreadable runs: {torn.name}" in err
    assert f"{empty.name} (its summary has no final_accuracy)" in err


def test_single_seed_cells_unreached_targets_and_a_missing_iid_baseline_say_so(tmp_path, capsys):
    fake_run(tmp_path, "fedavg", "label_2", 0, [0.2, 0.5, 0.7])
    fake_run(tmp_path, "fedprox", "label_2", 0, [0.3, 0.6, 0.95])
    fake_run(tmp_path, "fedprox", "label_2", 1, [0.3, 0.5, 0.93])
    assert report_main([str(tmp_path), "--target", "0.9"]) == 0
    out, table = capsys.readouterr().out, (tmp_path / "table.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| fed")}
    assert "| fedavg | 70.0 |" in table  # one seed: no ± 0.0
    assert "94.0 ± 1.4" in table  # two seeds: mean ± std
    assert "not reached" in table and "3.0" in table  # fedavg never reached 90%; fedprox at round 3
    assert "no iid runs in this study" in table and "note: no iid runs" in out
    assert rows and "mean ± std over 1/2 seeds" in table


def test_report_help_prints_the_whole_description(capsys):
    with pytest.raises(SystemExit):
        report_main(["--help"])
    assert "studies with held-out target sites table_targets.md/.csv" in capsys.readouterr().out


def test_runs_that_differ_in_more_than_seed_get_rows_of_their_own_not_pooled_as_seeds(tmp_path):
    """A study of continual methods: fedavg with ewc and with replay are two rows of 2 seeds each."""
    from fedcls.studies.report import load_study

    for seed in (0, 1):
        for method, final in (("ewc", 0.5), ("replay", 0.7)):
            cfg = compose(["scenario=iid", f"seed={seed}", f"continual.method={method}"])
            run_dir = tmp_path / "runs" / f"{method}-{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
            (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": final}) + "\n")
            (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "final_accuracy": final}))
    cells = load_study(tmp_path, 0.9)
    assert {k: c.finals for k, c in cells.items()} == {
        ("fedavg (continual.method=ewc)", "iid"): [0.5, 0.5], ("fedavg (continual.method=replay)", "iid"): [0.7, 0.7]}


def test_runs_that_counted_bytes_get_a_megabytes_table_and_an_accuracy_against_megabytes_plot(tmp_path):
    from fedcls.studies.report import load_study

    for seed, per_round in ((0, 1_000_000), (1, 3_000_000)):  # 1 MB and 3 MB each round, both ways together
        cfg = compose(["scenario=iid", f"seed={seed}"])
        run_dir = tmp_path / "runs" / f"iid-{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        rows = [{"round": r, "accuracy": 0.5 + 0.1 * r, "bytes": {"to_sites": per_round // 2, "from_sites": per_round // 2}}
                for r in (1, 2, 3)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "final_accuracy": 0.8}))
    cell = load_study(tmp_path, 0.9)[("fedavg", "iid")]
    assert cell.megabytes == [[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]]
    report(tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| fedavg | 6.0 |" in table.split("Megabytes to and from the sites")[1]  # (3 + 9) / 2
    assert (tmp_path / "plots" / "traffic_iid.png").exists()
