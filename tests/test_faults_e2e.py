"""Injected faults on a real Flower simulation: 20 clients, 20% each of drops, crashes, NaN
updates and stragglers (past the round timeout); the run keeps learning and every round's
failure lists are exactly the injected ones."""

import json

import pytest

from fedcls.config import compose
from fedcls.faults import fault_of

pytestmark = pytest.mark.e2e
ARGS = ["num_clients=20", "rounds=5", "local_epochs=1", "lr=0.05", "model=mlp", "fraction_evaluate=0",
        "save_model=false", "faults.drop_prob=0.2", "faults.crash_prob=0.2", "faults.nan_prob=0.2",
        "faults.straggler_prob=0.2", "faults.straggler_delay=30", "faults.round_timeout=5"]
REASON = {"drop": "dropped", "crash": "crashed", "nan": "non_finite", "straggler": "late"}


def test_training_goes_on_through_injected_faults_and_counts_them(cli, tmp_path):
    result = cli(*ARGS, f"output_dir={tmp_path}", "run_id=run")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cfg = compose(ARGS)
    for row in rows:
        expected = {reason: [] for reason in REASON.values()}
        for site in range(20):
            if (fault := fault_of(cfg, row["round"], site)) is not None:
                expected[REASON[fault]].append(site)
        assert row["faults"] == expected, row["round"]
        healthy = sorted(set(range(20)) - {s for sites in expected.values() for s in sites})
        assert sorted(s for s, _ in row["trained"]) == healthy
        assert len(row["failures"]) == len(expected["crashed"])
        assert all("injected crash" in reason for reason in row["failures"])
    assert sum(len(r["faults"][k]) for r in rows for k in REASON.values()) >= 40  # ~80 of 100 expected
    assert rows[-1]["accuracy"] > max(rows[0]["accuracy"], 0.5)  # chance: 0.1
