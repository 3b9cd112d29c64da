"""``python -m fedcls.report STUDY_DIR [--target 0.9]``: tables and plots of a study, from its
runs' files only (runs/*/config.yaml, summary.json, metrics.jsonl).

Writes into STUDY_DIR: table.md, table.csv, table.tex (booktabs) with final accuracy mean +- std
over seeds per strategy x scenario, degradation against ``iid`` in points, and rounds to reach
the target accuracy; plots/accuracy_<scenario>.png, plots/degradation.png,
plots/partition_<scenario>.png. Studies of continual runs also get table_continual.md/.csv
(average accuracy, forgetting, BWT per scenario x method; see fedcls.studies.continual_report), and
studies with held-out target sites table_targets.md/.csv (fedcls.studies.domain_report).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fedcls.errors import UserError


@dataclass
class Cell:
    """All seeds of one strategy x scenario."""

    finals: list[float] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)
    to_target: list[int | None] = field(default_factory=list)
    partition: list[list[int]] | None = None
    cfg: dict | None = None  # the first seed's config: names the figures (dataset, budget)
    megabytes: list[list[float]] = field(default_factory=list)  # per seed: MB to and from the sites so far, per round

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0

    def rounds_to_target(self) -> float | None:
        """Mean over seeds that reached the target; None when none did."""
        reached = [r for r in self.to_target if r is not None]
        return statistics.fmean(reached) if reached else None


def load_study(study: Path, target: float) -> dict[tuple[str, str], Cell]:
    """{(strategy, scenario): Cell} from every completed run under study/runs. A strategy whose
    parameters differ between runs (a tuning study) gets one row per setting: "fedadam (eta=0.01)"."""
    runs = completed(run_dirs(study))
    label = strategy_labels([cfg for cfg, _, _ in runs])
    setting = setting_labels([cfg for cfg, _, _ in runs], label)
    cells: dict[tuple[str, str], Cell] = {}
    for cfg, summary, rows in runs:
        cell = cells.setdefault((label(cfg) + setting(cfg), scenario_of(cfg)), Cell())
        cell.finals.append(summary["final_accuracy"])
        cell.curves.append([r["accuracy"] for r in rows])
        cell.to_target.append(next((r["round"] for r in rows if r["accuracy"] >= target), None))
        cell.partition = cell.partition or summary.get("partition_counts")
        if all("bytes" in r for r in rows):  # runs since fedcls counted bytes (fedcls.apps.traffic)
            from fedcls.outputs.plots import megabytes_so_far

            cell.megabytes.append([float(mb) for mb in megabytes_so_far(rows)])
        cell.cfg = cell.cfg or cfg
    return cells


def completed(run_dirs_: list[Path]) -> list[tuple[dict, dict, list[dict]]]:
    """(config, summary, metrics rows) of each completed run; a run whose files cannot be read (a
    corrupt summary, half a metrics line, no final accuracy) is left out, named on stderr."""
    runs, unreadable = [], []
    for run_dir in run_dirs_:
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        try:
            summary = json.loads(summary_path.read_text())
            if summary.get("status") != "completed":
                continue
            if not isinstance(summary.get("final_accuracy"), (int, float)):
                raise ValueError("its summary has no final_accuracy")
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        except (OSError, ValueError, yaml.YAMLError) as err:
            unreadable.append(f"{run_dir.name} ({str(err).splitlines()[0][:120]})")
            continue
        runs.append((cfg, summary, rows))
    if unreadable:
        print(f"report: left out {len(unreadable)} unreadable runs: {'; '.join(unreadable)}", file=sys.stderr)
    return runs


def strategy_labels(cfgs: list[dict]):
    """cfg -> the strategy's name, plus the strategy parameters that vary among its runs."""
    varied: dict[str, list[str]] = {}
    for name in {c["strategy"]["name"] for c in cfgs}:
        same = [c["strategy"] for c in cfgs if c["strategy"]["name"] == name]
        varied[name] = [k for k in same[0] if k != "name" and len({str(s.get(k)) for s in same}) > 1]

    def label(cfg: dict) -> str:
        node = cfg["strategy"]
        extra = ", ".join(f"{k}={node[k]}" for k in varied[node["name"]])
        return f"{node['name']} ({extra})" if extra else node["name"]
    return label


def scenario_of(cfg: dict) -> str:
    return str(cfg["scenario"] or cfg["partition"]["kind"])


def setting_labels(cfgs: list[dict], strategy_label):
    """cfg -> " (key=value, ...)": the settings besides the strategy's that differ among the seeds of
    one strategy and scenario (a study of continual methods: continual.method=ewc), so that such runs
    get rows of their own instead of being pooled as more seeds; "" when none differ."""
    from fedcls.studies.tables import flat_with_defaults, varied_keys

    groups: dict[tuple[str, str], list[dict]] = {}
    for cfg in cfgs:
        groups.setdefault((strategy_label(cfg), scenario_of(cfg)), []).append(cfg)
    varied = {group: [k for k in varied_keys(members, ()) if not k.startswith("strategy.")]
              for group, members in groups.items()}

    def label(cfg: dict) -> str:
        keys, values = varied[(strategy_label(cfg), scenario_of(cfg))], flat_with_defaults(cfg)
        return f" ({', '.join(f'{k}={values[k]}' for k in keys)})" if keys else ""
    return label


def run_dirs(study: Path) -> list[Path]:
    """The study's run folders, in the sweep's grid order when study.json lists it."""
    listed = study / "study.json"
    if listed.exists():
        try:
            return [study / "runs" / str(r) for r in json.loads(listed.read_text())["runs"]]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{listed} is not a study list ({str(err).splitlines()[0][:120]}): fix it, or delete it "
                            f"to report every folder under {study / 'runs'}") from None
    return sorted((study / "runs").iterdir())


def axes(cells: dict) -> tuple[list[str], list[str]]:
    """Strategies and scenarios in order of first appearance; iid first (the reference)."""
    labels = list(dict.fromkeys(s for s, _ in cells))
    first = {name: i for i, name in reversed(list(enumerate(lb.split(" (")[0] for lb in labels)))}
    strategies = sorted(labels, key=lambda lb: (first[lb.split(" (")[0]], setting_key(lb)))
    scenarios = sorted(dict.fromkeys(c for _, c in cells), key=lambda c: c != "iid")
    return strategies, scenarios


def setting_key(label: str) -> list[tuple]:
    """A tuning row's parameter values, numbers as numbers: "fedadam (eta=0.003)" < "(eta=0.01)"."""
    if " (" not in label:
        return []
    settings = label[label.index(" (") + 2:-1].split(", ")
    return [number_or_text(setting.split("=", 1)[-1]) for setting in settings]


def number_or_text(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def degradation(cells: dict, strategy: str, scenario: str) -> float | None:
    """Points lost against the same strategy's iid accuracy."""
    if (strategy, "iid") not in cells or (strategy, scenario) not in cells:
        return None
    return 100 * (cells[(strategy, "iid")].mean - cells[(strategy, scenario)].mean)


NOT_REACHED = "not reached"  # a rounds-to-target cell whose runs never reached the target
LEGEND = ("–: no finished run of that strategy and scenario; one seed: its value, without ±; "
          f"{NOT_REACHED}: no seed reached the target within its rounds.")


def fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "–" if value is None else pattern.format(value)  # en dash: no value


def accuracy_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    return f"{100 * cell.mean:.1f}" if len(cell.finals) == 1 else f"{100 * cell.mean:.1f} ± {100 * cell.std:.1f}"


def rounds_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    rounds = cell.rounds_to_target()
    return NOT_REACHED if rounds is None else f"{rounds:.1f}"


def missing_baseline(cells: dict) -> str | None:
    """Why there is no degradation table or plot (no iid runs), and how to get one; None if there is."""
    if any(scenario == "iid" for _, scenario in cells):
        return None
    return ("no iid runs in this study, so no degradation against iid: add iid to the sweep's scenario "
            "list (scenario=iid,...) and report again")


def markdown(cells, strategies, scenarios, target) -> str:
    def table(title, value):
        head = f"| strategy | {' | '.join(scenarios)} |\n|---|{'---|' * len(scenarios)}"
        body = [f"| {s} | " + " | ".join(value(s, c) for c in scenarios) + " |" for s in strategies]
        return f"### {title}\n\n{head}\n" + "\n".join(body)

    seeds = sorted({len(c.finals) for c in cells.values()})
    over = f"mean ± std over {'/'.join(map(str, seeds))} seeds" if seeds != [1] else "one seed"
    degradation_table = (f"### Degradation against iid, points\n\n{note}" if (note := missing_baseline(cells))
                         else table("Degradation against iid, points", lambda s, c: fmt(degradation(cells, s, c))))
    return "\n\n".join([
        table(f"Final global test accuracy, % ({over})", lambda s, c: accuracy_text(cells.get((s, c)))),
        degradation_table,
        table(f"Rounds to reach {target:.0%} global accuracy (mean over seeds that did)",
              lambda s, c: rounds_text(cells.get((s, c)))),
        *([table("Megabytes to and from the sites over the whole run (mean over seeds)",
                 lambda s, c: megabytes_text(cells.get((s, c))))]
          if any(c.megabytes for c in cells.values()) else []),
        LEGEND,
    ]) + "\n"


def megabytes_text(cell: Cell | None) -> str:
    """A run's total traffic in MB, mean over the seeds that counted it ("–": none did)."""
    if cell is None or not cell.megabytes:
        return "–"
    return f"{statistics.fmean(m[-1] for m in cell.megabytes):.1f}"


def latex(cells, strategies, scenarios) -> str:
    cols = "l" + "c" * len(scenarios)
    head = " & ".join(["Strategy", *[c.replace("_", r"\_") for c in scenarios]]) + r" \\"
    body = []
    for s in strategies:
        cells_text = [accuracy_text(cells.get((s, c))).replace("±", r"$\pm$").replace("–", "--")
                      for c in scenarios]
        body.append(" & ".join([s, *cells_text]) + r" \\")
    return "\n".join([rf"\begin{{tabular}}{{{cols}}}", r"\toprule", head, r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_csv(path: Path, cells, strategies, scenarios) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["strategy", "scenario", "seeds", "accuracy_mean", "accuracy_std",
                      "degradation_points", "rounds_to_target"])
        for s in strategies:
            for c in scenarios:
                if (s, c) in cells:
                    cell = cells[(s, c)]
                    out.writerow([s, c, len(cell.finals), cell.mean, cell.std,
                                  degradation(cells, s, c), cell.rounds_to_target()])


def report(study: Path, target: float = 0.9) -> dict:
    """Write the tables and plots; return the cells."""
    from fedcls.outputs.plots import plot_study

    cells = load_study(study, target)
    if not cells:
        raise FileNotFoundError(f"no completed runs under {study / 'runs'}")
    strategies, scenarios = axes(cells)
    (study / "table.md").write_text(markdown(cells, strategies, scenarios, target))
    (study / "table.tex").write_text(latex(cells, strategies, scenarios))
    write_csv(study / "table.csv", cells, strategies, scenarios)
    plot_study(cells, strategies, scenarios, study / "plots", degradation)
    from fedcls.studies.continual_report import write_continual_tables
    from fedcls.studies.domain_report import write_target_tables
    from fedcls.studies.privacy_report import write_privacy_tables

    write_continual_tables(study, run_dirs(study))
    write_target_tables(study, run_dirs(study))
    write_privacy_tables(study, run_dirs(study))
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcls.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--target", type=float, default=0.9, help="accuracy for rounds-to-target")
    args = parser.parse_args(argv)
    try:
        cells = report(args.study, args.target)
    except (FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}; run python -m fedcls.sweep first", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print((args.study / "table.md").read_text())
    for extra in ("table_continual.md", "table_targets.md", "table_privacy.md"):
        if (args.study / extra).exists():
            print((args.study / extra).read_text())
    if note := missing_baseline(cells):
        print(f"note: {note} (plots/degradation.png is not made either)")
    print(f"written: {args.study}/table.md, table.csv, table.tex, plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
