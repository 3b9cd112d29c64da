"""``python -m fedcls.sweep name=STUDY key=a,b,c ...``: run a grid of simulations as one study.

    python -m fedcls.sweep name=niid_mnist5k strategy=fedavg,fedprox scenario=iid,label_2 seed=0,1,2

Comma lists (and Hydra's other sweep forms, e.g. ``seed=range(0,3)``) span the grid; other
overrides apply to every run. Runs go to ``<output_dir>/runs/<run-id>`` where ``output_dir``
defaults to ``results/studies/<name>``. All runs share one Ray instance (started once in this
process, or the cluster at ``backend.ray_address``). Finished runs are skipped when the sweep is started again, so a
killed sweep resumes, and a run it interrupted continues from its last checkpoint (fedcls.outputs.checkpoint)
when its config is unchanged; a failed run is recorded and the sweep goes on. Then:
``python -m fedcls.report <output_dir>``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from fedcls.errors import ConfigError, UserError, run_cli
from fedcls.outputs.locks import holding
from fedcls.outputs.progress import Progress, duration, remaining
from fedcls.schema import Config


def expand_grid(args: list[str]) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """(study settings name/output_dir, overrides for every run, the swept overrides per point)."""
    from fedcls.config import parse_override

    fixed, common, axes = {}, [], []
    for arg in args:
        override = parse_override(arg)
        key = override.key_or_group
        if key in ("name", "output_dir") and not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
        elif override.is_sweep_override():
            axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            common.append(arg)
    return fixed, common, [list(point) for point in itertools.product(*axes)]


def run_id_of(point: list[str]) -> str:
    """A readable, filesystem-safe id from a grid point's overrides."""
    safe = "".join(c if c.isalnum() or c in "._=-" else "-" for c in "_".join(point))
    return safe.replace("=", "-") or "default"


def is_finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "completed"


def _resumable(run_dir: Path, cfg: Config) -> bool:
    """An unfinished run of this very config with a readable checkpoint: continue it."""
    import yaml

    from fedcls.outputs import checkpoint

    try:
        same = yaml.safe_load((run_dir / "config.yaml").read_text()) == cfg.to_dict()
        return same and checkpoint.load(run_dir) is not None
    except (OSError, yaml.YAMLError, UserError):
        return False


def refuse_collisions(common: list[str], points: list[list[str]], runs_dir: Path) -> None:
    """A finished run whose id this grid reuses but whose config differs in a key this command
    names (e.g. an earlier sweep of strategy=fedadam strategy.eta=0.01,0.1 and now strategy=fedyogi
    with the same etas: the run ids name only the swept keys) would be skipped as done: refuse."""
    import yaml

    from fedcls.config import compose
    from fedcls.studies.tables import flat

    clashes = []
    for point in points:
        run_dir = runs_dir / run_id_of(point)
        if not is_finished(run_dir):
            continue
        old, new = flat(yaml.safe_load((run_dir / "config.yaml").read_text())), flat(compose([*common, *point]).to_dict())
        named = {arg.split("=", 1)[0].lstrip("+~") for arg in [*common, *point]}
        if any(old.get(k) != new.get(k) for k in new if k.split(".")[0] in named or k in named):
            clashes.append(run_id_of(point))
    if clashes:
        raise ConfigError(
            f"{len(clashes)} finished runs of this study ({clashes[0]}, ...) have the ids this grid would use "
            "but a different config: sweep the key that differs so that it names the runs, e.g. "
            "strategy=choice(fedyogi), or use another study name")


RUN_PLOTS = "plots=png"  # a run's own figures in a sweep (plots=png+pdf on the command line adds PDFs)


def point_config(common: list[str], point: list[str], runs_dir: Path) -> Config:
    """A grid point's composed config, its run folder named by the point."""
    from fedcls.config import compose

    return compose([RUN_PLOTS, *common, *point, f"output_dir={runs_dir}", f"run_id={run_id_of(point)}"])


def run_point(cfg: Config, runs_dir: Path, progress=None) -> tuple[str, dict]:
    """Run one grid point's config (its console: `progress`); ('done' | 'failed', summary)."""
    from fedcls.engine.runner import run

    run_dir = runs_dir / cfg.run_id
    try:
        resume = run_dir if _resumable(run_dir, cfg) else None
        if run_dir.exists() and resume is None:  # an unfinished run without a usable checkpoint
            shutil.rmtree(run_dir)
        code = run(cfg, echo=None, resume_dir=resume, progress=progress)
    except UserError as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(str(err))
        return "failed", {"error": str(err)}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return ("done" if code == 0 else "failed"), summary


def run_progress(cfg: Config, number: str, later_runs: float | None) -> Progress:
    """A sweep run's console: on a terminal a live line labelled with its place in the grid,
    otherwise its phases and rounds as indented plain lines; both say how long the grid has left
    (this run's time left plus `later_runs` seconds, once a run has finished to measure the pace)."""
    def grid_left(run_left: float) -> str:
        return f"grid ~{duration(run_left + later_runs)} left" if later_runs is not None else ""

    return Progress(cfg.rounds, echo=lambda line: print("    " + line.strip(), flush=True), label=f"{number} ",
                    after=grid_left)


def record_study(study: Path, command: str, runs: list[str]) -> None:
    """study.json: every sweep command that wrote into this study and their runs, in order (a
    study may be built by several sweeps, e.g. one per strategy when their parameters differ)."""
    path = study / "study.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    commands = [c for c in old.get("commands", [old["command"]] if "command" in old else []) if c != command]
    listed = [r for r in old.get("runs", []) if r not in runs] + runs
    path.write_text(json.dumps({"commands": [*commands, command], "runs": listed}, indent=2))


def sweep(args: list[str]) -> int:
    fixed, common, points = expand_grid(args)
    if "name" not in fixed and "output_dir" not in fixed:
        raise ConfigError("name the study: name=<study> (or output_dir=<folder>)")
    study = Path(fixed.get("output_dir") or Path("results/studies") / fixed["name"])
    runs_dir = study / "runs"
    if not points:
        raise ConfigError("the grid is empty: give each swept key at least one value, e.g. seed=0,1,2")
    ids = [run_id_of(p) for p in points]
    if twice := next((i for i in ids if ids.count(i) > 1), None):
        raise ConfigError(f"the grid names run {twice} more than once: a swept key repeats a value (values are "
                          "compared once parsed: 0.0 and 0.00 are one value); give each swept key distinct values")
    configs = [point_config(common, point, runs_dir) for point in points]  # a typo fails here, before Ray
    runs_dir.mkdir(parents=True, exist_ok=True)
    with holding(study, "the study"):
        return _sweep(args, study, common, points, configs)


def _sweep(args: list[str], study: Path, common: list[str], points: list[list[str]], configs: list[Config]) -> int:
    runs_dir = study / "runs"
    record_study(study, " ".join(["python -m fedcls.sweep", *args]), [run_id_of(p) for p in points])
    refuse_collisions(common, points, runs_dir)
    todo = [(p, c) for p, c in zip(points, configs) if not is_finished(runs_dir / run_id_of(p))]
    print(f"sweep {study}: {len(points)} runs, {len(points) - len(todo)} already done", flush=True)
    from fedcls.engine.simulation import shared_ray
    from fedcls.outputs.results import plots_in_background

    console = GridConsole(len(points), len(todo))
    with plots_in_background(), shared_ray(configs[0].backend.ray_address, first=todo[0][1] if todo else None):
        from fedcls.engine.lifecycle import ray_started
        from fedcls.studies.side_by_side import make_room

        print(f"  ray     {ray_started(configs[0].backend.ray_address)} ({time.time() - console.started:.1f}s)",
              flush=True)
        if count := make_room([c for _, c in todo]):
            _side_by_side(todo, runs_dir, count, console)
        else:
            for point, cfg in todo:
                number = console.start(run_id_of(point))
                status, summary = run_point(cfg, runs_dir, run_progress(cfg, number, console.left(after_this=True)))
                console.finish(run_id_of(point), status, summary)
    failed = console.failed
    (study / "failed.json").write_text(json.dumps(failed, indent=2))
    print(f"study in {study}: {len(points) - len(failed)} of {len(points)} runs finished"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _side_by_side(todo: list[tuple[list[str], Config]], runs_dir: Path, count: int, console: GridConsole) -> None:
    from fedcls.studies.side_by_side import run_side_by_side

    console.at_once = count
    print(f"  grid    {count} runs at a time (backend.executor=inprocess, {todo[0][1].backend.num_cpus} CPU each); "
          f"a line as each starts and ends", flush=True)
    run_side_by_side([(run_id_of(p), c) for p, c in todo], runs_dir, count, run_point, console.start, console.finish)


class GridConsole:
    """A sweep's lines: a run started, a run ended (its accuracy, time and the grid's time left,
    at the pace so far over `at_once` runs at a time); keeps the failed runs."""

    def __init__(self, total: int, todo: int):
        self.total, self.todo, self.at_once = total, todo, 1
        self.started, self.seconds, self.failed = time.time(), [], []
        self.numbers: dict[str, str] = {}

    def left(self, after_this: bool = False) -> float | None:
        """Seconds the runs not yet finished need (`after_this`: not counting the one starting)."""
        runs_left = self.todo - len(self.seconds) - after_this
        left = remaining(self.seconds, runs_left)
        return left / max(min(self.at_once, runs_left), 1) if left is not None else None

    def start(self, run_id: str) -> str:
        number = self.numbers[run_id] = f"[{self.total - self.todo + len(self.numbers) + 1}/{self.total}]"
        grid_left = self.left()
        print(f"{number} {run_id}: started" + (f"; the grid has ~{duration(grid_left)} left" if grid_left else ""),
              flush=True)
        return number

    def finish(self, run_id: str, status: str, summary: dict) -> None:
        self.seconds.append(summary.get("seconds") or time.time() - self.started - sum(self.seconds))
        if status == "failed":
            self.failed.append(run_id)
        acc = summary.get("final_accuracy")
        grid_left = self.left()
        print(f"{self.numbers[run_id]} {run_id}: {status}{f', accuracy {acc:.4f}' if acc is not None else ''} in "
              f"{duration(self.seconds[-1])}; {duration(time.time() - self.started)} elapsed"
              + (f", ~{duration(grid_left)} left" if len(self.seconds) < self.todo and status != "interrupted" else ""),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    from fedcls.engine.warm_driver import forward

    forwarded = forward("sweep", list(sys.argv[1:] if argv is None else argv))  # FEDCLS_SERVER: fedcls.serve runs it
    return forwarded if forwarded is not None else run_cli(sweep, argv, __doc__, defer_ctrl_c=True)


if __name__ == "__main__":
    sys.exit(main())
