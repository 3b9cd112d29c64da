"""The target table of a study with held-out target sites: per scenario x strategy (+ CORAL),
the target sites' accuracy, the mean accuracy of the source sites and the global test
accuracy, mean ± std over seeds. Written by ``python -m fedcls.report`` as table_targets.md/.csv."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedcls.studies.tables import cells_of, completed_runs, write_table

HEADERS = {"target_accuracy": "target accuracy", "source_accuracy": "source sites' accuracy",
           "final_accuracy": "global test accuracy"}


def _values(summary: dict) -> dict:
    sources = [summary["site_accuracy"][str(s)] for s in summary["sources"]
               if str(s) in summary.get("site_accuracy", {})]
    return {"target_accuracy": summary["target_accuracy"], "final_accuracy": summary["final_accuracy"],
            "source_accuracy": statistics.fmean(sources) if sources else None}


def _setting(cfg: dict) -> str:
    coral = cfg["coral"]
    recolour = f" + recolour (eps {coral['recolour_eps']:g})" if coral.get("align", "none") == "recolour" else ""
    if not coral["enabled"]:
        return cfg["strategy"]["name"] + recolour
    # the defaults unnamed; a run from before these settings: the paper's loss, targets idle
    extra = [f"{coral['loss']} loss"] if coral.get("loss", "paper") != "paper" else []
    extra += [] if coral.get("train_targets", False) else ["targets idle"]
    extra += [] if coral.get("target_update", "added") == "added" else [f"{coral['target_update']} target update"]
    parts = [f"lambda {coral['lambda']:g}", coral["mode"], *extra]
    return f"{cfg['strategy']['name']} + CORAL ({', '.join(parts)})" + recolour


def write_target_tables(study: Path, run_dirs: list[Path]) -> bool:
    runs = completed_runs(run_dirs, "target_accuracy")
    if not runs:
        return False
    cells = cells_of(runs, _setting, ("strategy.name", "coral.enabled", "coral.lambda", "coral.mode", "coral.loss",
                                      "coral.train_targets", "coral.target_update", "coral.align",
                                      "coral.recolour_eps"), _values)
    write_table(study, "table_targets", "Accuracy at the held-out target sites", "setting", cells, HEADERS)
    return True
