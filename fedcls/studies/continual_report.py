"""The continual table of a study: per scenario x method (``continual.method``, plus any
``continual.plugins``, plus the strategy when the study has several), the average accuracy,
forgetting and BWT after the last experience, mean ± std over seeds; from the runs' files only.
Written by ``python -m fedcls.report`` as table_continual.md and table_continual.csv."""

from __future__ import annotations

from pathlib import Path

from fedcls.studies.tables import cells_of, completed_runs, write_table

HEADERS = {"average_accuracy": "average accuracy", "forgetting": "forgetting", "bwt": "BWT"}


def write_continual_tables(study: Path, run_dirs: list[Path]) -> bool:
    """table_continual.md/.csv when the study has continual runs; False when it has none."""
    runs = completed_runs(run_dirs, "accuracy_matrix")
    if not runs:
        return False
    several = len({cfg["strategy"]["name"] for cfg, _ in runs}) > 1

    def method(cfg: dict) -> str:
        c = cfg["continual"]
        name = c["method"] + "".join(f"+{p}" for p in c.get("plugins", []))
        return f"{cfg['strategy']['name']}/{name}" if several else name

    cells = cells_of(runs, method, ("continual.method", "continual.plugins", "strategy.name"),
                     lambda s: {k: s[k] for k in HEADERS})
    write_table(study, "table_continual", "Continual metrics after the last experience", "method",
                cells, HEADERS)
    return True
