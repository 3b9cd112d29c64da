"""The continual table of a study: per scenario x method (``continual.method``, plus any
``continual.plugins``, plus the strategy when the study has several), the average accuracy,
forgetting and BWT after the last experience, mean ± std over seeds; from the runs' files only.
Written by ``python -m fedcls.report`` as table_continual.md and table_continual.csv."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import yaml

KEYS = ("average_accuracy", "forgetting", "bwt")


def method_of(cfg: dict, several_strategies: bool) -> str:
    c = cfg["continual"]
    name = c["method"] + "".join(f"+{p}" for p in c.get("plugins", []))
    return f"{cfg['strategy']['name']}/{name}" if several_strategies else name


IGNORED = ("seed", "scenario", "run_id", "output_dir", "continual.method", "continual.plugins")


def _flat(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": str(v)})
    return out


def varied_keys(cfgs: list[dict]) -> list[str]:
    """Settings that differ between the runs besides seed, scenario and method (swept keys)."""
    flats = [_flat(c) for c in cfgs]
    keys = dict.fromkeys(k for f in flats for k in f)
    return [k for k in keys if k not in IGNORED and len({f.get(k) for f in flats}) > 1]


def load_cells(run_dirs: list[Path]) -> dict[tuple[str, str], dict[str, list[float]]]:
    runs = []
    for run_dir in run_dirs:
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if summary.get("status") == "completed" and "accuracy_matrix" in summary:
            runs.append((yaml.safe_load((run_dir / "config.yaml").read_text()), summary))
    varied = [k for k in varied_keys([cfg for cfg, _ in runs]) if k != "strategy.name"]
    several = len({cfg["strategy"]["name"] for cfg, _ in runs}) > 1
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for cfg, summary in runs:
        flat = _flat(cfg)
        extra = ", ".join(f"{k}={flat.get(k)}" for k in varied)
        label = method_of(cfg, several) + (f" ({extra})" if extra else "")
        cell = cells.setdefault((str(cfg["scenario"]), label), {k: [] for k in KEYS})
        for k in KEYS:
            if summary[k] is not None:
                cell[k].append(summary[k])
    return cells


def _text(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.1f} ± {scale * std:.1f}"


def write_continual_tables(study: Path, run_dirs: list[Path]) -> bool:
    """table_continual.md/.csv when the study has continual runs; False when it has none."""
    cells = load_cells(run_dirs)
    if not cells:
        return False
    seeds = sorted({len(v["average_accuracy"]) for v in cells.values()})
    lines = [f"### Continual metrics after the last experience, % (mean ± std over "
             f"{'/'.join(map(str, seeds))} seeds)", "",
             "| scenario | method | average accuracy | forgetting | BWT |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {m} | " + " | ".join(_text(v[k]) for k in KEYS) + " |"
              for (s, m), v in cells.items()]
    (study / "table_continual.md").write_text("\n".join(lines) + "\n")
    with (study / "table_continual.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["scenario", "method", "seeds", *[f"{k}_{s}" for k in KEYS for s in ("mean", "std")]])
        for (s, m), v in cells.items():
            stats = [x for k in KEYS for x in (statistics.fmean(v[k]) if v[k] else None,
                                               statistics.stdev(v[k]) if len(v[k]) > 1 else None)]
            out.writerow([s, m, len(v["average_accuracy"]), *stats])
    return True
