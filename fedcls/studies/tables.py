"""Tables of per-run summary metrics over seeds (continual metrics, target accuracy, ...):
one row per scenario x setting, mean ± std over seeds, from the runs' files only. The setting's
label names what the runs differ in besides seed and scenario (the swept keys)."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import yaml

ALWAYS_IGNORED = ("seed", "scenario", "run_id", "output_dir")


def completed_runs(run_dirs: list[Path], needs: str) -> list[tuple[dict, dict]]:
    """(config, summary) of the completed runs whose summary has key `needs`."""
    runs = []
    for run_dir in run_dirs:
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if summary.get("status") == "completed" and needs in summary:
            runs.append((yaml.safe_load((run_dir / "config.yaml").read_text()), summary))
    return runs


def flat(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in cfg.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": str(v)})
    return out


def flat_with_defaults(cfg: dict) -> dict[str, str]:
    """flat(cfg), with the keys a run from an older fedcls lacks at today's defaults (what it ran with)."""
    from fedcls.schema import Config

    return {**flat(Config.from_dict({}).to_dict()), **flat(cfg)}


def varied_keys(cfgs: list[dict], named: tuple[str, ...]) -> list[str]:
    """Settings that differ between runs, besides seed, scenario and the keys a label names."""
    flats = [flat_with_defaults(c) for c in cfgs]
    keys = dict.fromkeys(k for f in flats for k in f)
    return [k for k in keys if k not in ALWAYS_IGNORED + named and len({f.get(k) for f in flats}) > 1]


def cells_of(runs, name: Callable[[dict], str], named: tuple[str, ...],
             values: Callable[[dict], dict[str, float | None]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """{(scenario, label): {metric: values over seeds}}; label = name(cfg) (+ the keys that vary
    within the scenario besides those `name` covers)."""
    scenarios = {str(cfg["scenario"]) for cfg, _ in runs}
    varied = {s: varied_keys([cfg for cfg, _ in runs if str(cfg["scenario"]) == s], named) for s in scenarios}
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for cfg, summary in runs:
        f = flat_with_defaults(cfg)
        extra = ", ".join(f"{k}={f.get(k)}" for k in varied[str(cfg["scenario"])])
        cell = cells.setdefault((str(cfg["scenario"]), name(cfg) + (f" ({extra})" if extra else "")), {})
        for key, value in values(summary).items():
            cell.setdefault(key, [])
            if value is not None:
                cell[key].append(value)
    return cells


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.1f} ± {scale * std:.1f}"


def write_table(study: Path, name: str, title: str, label: str, cells: dict, headers: dict[str, str]) -> None:
    """<study>/<name>.md (mean ± std in %) and <name>.csv (means and stds)."""
    seeds = sorted({max(map(len, v.values()), default=0) for v in cells.values()})
    lines = [f"### {title}, % (mean ± std over {'/'.join(map(str, seeds))} seeds)", "",
             f"| scenario | {label} | " + " | ".join(headers.values()) + " |",
             "|---|---|" + "---|" * len(headers)]
    lines += [f"| {s} | {m} | " + " | ".join(mean_std(v.get(k, [])) for k in headers) + " |"
              for (s, m), v in cells.items()]
    (study / f"{name}.md").write_text("\n".join(lines) + "\n")
    with (study / f"{name}.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["scenario", label, "seeds", *[f"{k}_{s}" for k in headers for s in ("mean", "std")]])
        for (s, m), v in cells.items():
            stats = [x for k in headers for x in (statistics.fmean(v[k]) if v.get(k) else None,
                                                  statistics.stdev(v[k]) if len(v.get(k, [])) > 1 else None)]
            out.writerow([s, m, max(map(len, v.values()), default=0), *stats])
