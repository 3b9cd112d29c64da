"""The target table of a study with held-out target sites: per scenario x strategy (+ CORAL),
the target sites' accuracy, the mean accuracy of the source sites and the global test
accuracy, mean ± std over seeds. Written by ``python -m fedcls.report`` as table_targets.md/.csv."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedcls.study_tables import cells_of, completed_runs, write_table

HEADERS = {"target_accuracy": "target accuracy", "source_accuracy": "source sites' accuracy",
           "final_accuracy": "global test accuracy"}


def _values(summary: dict) -> dict:
    sources = [summary["site_accuracy"][str(s)] for s in summary["sources"]
               if str(s) in summary.get("site_accuracy", {})]
    return {"target_accuracy": summary["target_accuracy"], "final_accuracy": summary["final_accuracy"],
            "source_accuracy": statistics.fmean(sources) if sources else None}


def _setting(cfg: dict) -> str:
    coral = cfg["coral"]
    return cfg["strategy"]["name"] + (f" + CORAL (lambda {coral['lambda']:g}, {coral['mode']})"
                                      if coral["enabled"] else "")


def write_target_tables(study: Path, run_dirs: list[Path]) -> bool:
    runs = completed_runs(run_dirs, "target_accuracy")
    if not runs:
        return False
    cells = cells_of(runs, _setting, ("strategy.name", "coral.enabled", "coral.lambda", "coral.mode"), _values)
    write_table(study, "table_targets", "Accuracy at the held-out target sites", "setting", cells, HEADERS)
    return True
