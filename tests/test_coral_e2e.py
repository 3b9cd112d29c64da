"""CORAL end to end: a held-out target site on a real Flower simulation on Ray."""

import pytest

from test_continual_e2e import run

pytestmark = pytest.mark.e2e


def test_digits_target_with_fedbn_and_coral(cli, tmp_path):
    """A held-out digits site on Ray: it trains on the CORAL loss alone (never its labels), every
    site shares feature statistics every round, and the alignment and accuracy are recorded."""
    rows, summary = run(cli, tmp_path, "scenario=digits_shift", "strategy=fedbn", "coral.enabled=true",
                        "coral.lambda=10", "rounds=2", "local_epochs=1", "save_model=false")
    assert all(sorted(s for s, _ in r["trained"]) == [0, 1, 2, 3, 4] for r in rows)  # the target too
    assert all(r["train"]["coral_loss"] > 0 and r["coral_distance"] > 0 for r in rows)
    assert all(0 <= r["target_accuracy"] <= 1 and set(r["site_accuracy"]) == set("01234") for r in rows)
    assert summary["target_accuracy"] == rows[-1]["target_accuracy"] > 0.15  # chance is 0.1
    assert summary["targets"] == [4] and summary["sources"] == [0, 1, 2, 3]
    assert summary["target_dataset"] == "digits" and summary["coral"]["statistics_from"] == "all sites"
