"""The report's privacy and communication table: settings named from the configs, accuracy, epsilon
and megabytes averaged over seeds by hand, plots written."""

import json

import pytest
import yaml

from fedcls.config import compose
from fedcls.studies.report import report

RUNS = {  # (overrides): [(final accuracy, epsilon, bytes to sites, bytes from sites) per seed]
    (): [(0.90, None, 40e6, 20e6), (0.86, None, 40e6, 20e6)],
    ("compression.kind=int8",): [(0.88, None, 40e6, 5.2e6), (0.84, None, 40e6, 5.4e6)],
    ("privacy.dp=central", "privacy.noise_multiplier=0.5"): [(0.30, 16.5, 40e6, 20e6), (0.20, 17.5, 40e6, 20e6)],
    ("privacy.dp=dpsgd", "privacy.noise_multiplier=1.0"): [(0.70, 4.0, 40e6, 20e6), (0.74, 5.0, 40e6, 20e6)],
}


def fake_run(study, overrides, seed, final, eps, to_sites, from_sites):
    cfg = compose(["scenario=dirichlet_0.5", f"seed={seed}", *overrides])
    run_dir = study / "runs" / f"{'_'.join(overrides) or 'plain'}-{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    rows = [{"round": r, "accuracy": final * r / 2, "bytes": {"to_sites": to_sites / 2, "from_sites": from_sites / 2}}
            for r in (1, 2)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": "completed", "final_accuracy": final, "run_id": run_dir.name,
               "bytes": {"to_sites": to_sites, "from_sites": from_sites}, "partition_counts": [[1, 1]]}
    if eps is not None:
        summary["privacy"] = {"epsilon": eps, "delta": 1e-5}
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def study(tmp_path):
    for overrides, seeds in RUNS.items():
        for seed, values in enumerate(seeds):
            fake_run(tmp_path, overrides, seed, *values)
    return tmp_path


def test_the_privacy_table_averages_accuracy_epsilon_and_megabytes_over_seeds(study):
    report(study, target=0.8)
    table = (study / "table_privacy.md").read_text()
    assert "| none | 2 | 88.0 ± 2.8 | no guarantee | 40.0 | 20.0 |" in table
    assert "| int8 | 2 | 86.0 ± 2.8 | no guarantee | 40.0 | 5.3 |" in table  # (5.2 + 5.4) / 2
    assert "| central DP z=0.5 C=1 | 2 | 25.0 ± 7.1 | 17 ± 0.707 (1e-05) |" in table
    assert "| DP-SGD z=1 C=1 | 2 | 72.0 ± 2.8 | 4.5 ± 0.707 (1e-05) |" in table
    assert {p.name for p in (study / "plots").iterdir()} >= {"privacy_utility.png", "privacy_utility.pdf",
                                                            "communication.png", "communication.pdf"}


def test_runs_from_before_the_privacy_section_count_as_its_defaults(study):
    old = study / "runs" / "plain-0" / "config.yaml"
    cfg = yaml.safe_load(old.read_text())
    del cfg["privacy"]  # a run from a fedcls without the section: it ran without DP
    old.write_text(yaml.safe_dump(cfg))
    report(study, target=0.8)  # the old run is a seed of the plain setting, not a setting of its own
    assert "| none | 2 | 88.0 ± 2.8 | no guarantee | 40.0 | 20.0 |" in (study / "table_privacy.md").read_text()


def test_a_study_without_privacy_or_compression_settings_gets_no_privacy_table(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, (), seed, 0.9, None, 1e6, 1e6)
    report(tmp_path, target=0.8)
    assert not (tmp_path / "table_privacy.md").exists()
