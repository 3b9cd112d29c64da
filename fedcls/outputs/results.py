"""Run outputs: results/runs/<run-id>/ config.yaml, metrics.jsonl, summary.json, plots/, model.pt.

metrics.jsonl gets one whole line per round, flushed as the round ends; summary.json is written
atomically at the end, also when the run is interrupted or fails, so nothing computed is lost.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from fedcls.errors import UserError
from fedcls.outputs.progress import Progress
from fedcls.schema import Config

ERROR_FILE = "error.txt"  # a failed run's traceback, versions and command
CLIENT_ERRORS_FILE = "client_errors.txt"  # every failed client reply's whole reason, by round
WARNINGS_FILE = "warnings.log"  # other libraries' warnings during the run (fedcls.engine.logs)


CORE_LIBRARIES = ("fedcls", "flwr", "torch", "torchvision", "ray", "numpy", "avalanche-lib")


@functools.lru_cache(maxsize=1)  # installed versions do not change while a process runs; read per summary write
def _installed_versions() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    found = [("python", platform.python_version())]
    for name in CORE_LIBRARIES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return tuple(found)


def versions() -> dict[str, str]:
    """Versions of the libraries that determine a run's numbers (those installed)."""
    return dict(_installed_versions())


def new_run_dir(cfg: Config) -> Path:
    """A fresh folder under cfg.output_dir named by run_id (or time, scenario, strategy, seed)."""
    scenario = cfg.scenario or (Path(cfg.scenario_file).stem if cfg.scenario_file else cfg.partition.kind)
    name = cfg.run_id or (f"{datetime.now():%Y%m%d-%H%M%S}-{scenario}-"
                             f"{cfg.strategy.name}-s{cfg.seed}")
    base = Path(cfg.output_dir).expanduser()
    for n in range(1, 10_000):  # mkdir is the claim: two runs with one run_id get two folders
        path = base / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"cannot create the run folder {path} ({err.strerror}): set output_dir to a "
                            f"writable folder") from None
    raise UserError(f"{base} already holds 9999 runs named {name}: choose another run_id or output_dir")


def to_json(value, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinite number (a diverged loss) is written as null, never as the bare
    NaN that JSON readers refuse."""
    return json.dumps(_finite_or_null(value), indent=indent, allow_nan=False)


def _finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def total_bytes(rows: list[dict]) -> dict[str, int]:
    """Bytes sent to and received from the sites over the rounds so far (fedcls.apps.traffic)."""
    return {way: sum(r.get("bytes", {}).get(way, 0) for r in rows) for way in ("to_sites", "from_sites")}


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def console_line(row: dict, rounds: int) -> str:
    """One readable line per round."""
    clients, train = row["clients"], row["train"]
    parts = [f"round {row['round']:>3}/{rounds}", f"acc {row['accuracy']:.4f}", f"loss {row['loss']:.4f}"]
    if "train_loss" in train:
        parts.append(f"train_loss {train['train_loss']:.4f}")
    if "target_accuracy" in row and row["target_accuracy"] is not None:  # held-out target sites
        parts.append(f"target acc {row['target_accuracy']:.4f}")
    if "experience" in row:  # continual: the experience the sites learn now
        parts.append(f"experience {row['experience'] + 1}")
    if "accuracy_mean" in clients:
        parts.append(f"sites acc {clients['accuracy_mean']:.3f} "
                     f"[{clients['accuracy_min']:.3f}-{clients['accuracy_max']:.3f}]")
    if (spent := row.get("privacy", {}).get("epsilon")) is not None:  # differential privacy spent so far
        parts.append(f"eps {spent:.3g}")
    parts.append(f"{row['seconds']:.1f}s")
    if row["failures"]:
        parts.append(f"{len(row['failures'])} failed: {row['failures'][0][:120]}")
    return "  ".join(parts)


class Recorder:
    """Writes a run's files as it goes and prints one line per round."""

    def __init__(self, run_dir: Path, cfg: Config, echo=print, command: str | None = None,
                 started: float | None = None, progress: Progress | None = None):
        """`command`: what reruns the run (fedcls.config.rerun_command; default: this process's
        arguments); `started`: when the run began (default: now), so that summary.json's seconds
        are the run's one wall time, data building included; `progress`: the console
        (default: plain lines through `echo`)."""
        self.run_dir, self.cfg, self.echo = Path(run_dir), cfg, echo
        self.progress = progress or Progress(cfg.rounds, echo, live=False)
        self.command = command or " ".join(sys.argv)
        self.rows: list[dict] = []
        self.partition_counts: list[list[int]] = []
        self.site_names: list[str] | None = None  # a natural partition's id per site
        self.extras: dict = {}  # summary keys from server extensions (continual metrics, ...)
        self.error_file: str | None = None  # ERROR_FILE once the run failed
        self.status: str | None = None  # as finish() left it
        self.seconds = 0.0  # as the last summary.json written says
        self.started = started or time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.yaml", to_yaml(cfg))
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.metrics_path.touch()
        self.trackers: list | None = None  # fedcls.outputs.tracking, opened at the first round this process runs
        if not (self.run_dir / "summary.json").exists():
            self.interim()  # a run killed before its first round still leaves a summary that says so

    def start(self, data) -> None:
        """Note the partition (clients x classes counts) once the data is built."""
        labels = data.dataset.train_y.numpy()
        self.partition_counts = data.partition.class_counts(labels, data.dataset.num_classes).tolist()
        self.site_names = data.partition.names

    def round(self, rnd: int, metrics: dict) -> None:
        row = {"round": rnd, **metrics, "elapsed": time.time() - self.started}
        self.rows.append(row)
        with self.metrics_path.open("a") as f:
            f.write(to_json(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.interim()
        for tracker in self._trackers(rnd):
            tracker.round(row)
        self.progress.round_done(rnd, row["seconds"], console_line(row, self.cfg.rounds))

    def _trackers(self, rnd: int) -> list:
        if self.trackers is None:
            from fedcls.outputs.tracking import trackers_for

            self.trackers = trackers_for(self.cfg, self.run_dir, first_round=rnd)
        return self.trackers

    def interim(self) -> None:
        """Until the run ends, summary.json describes it as interrupted after its last round (so a
        run killed at any moment leaves one that says so, with the command to resume once a
        checkpoint exists); finish() overwrites it."""
        self.write_summary("interrupted")

    def resume_from(self, rows: list[dict], extras: dict) -> None:
        """Continue a run from a checkpoint: its rows (metrics.jsonl rewritten to exactly them)."""
        self.rows, self.extras = list(rows), dict(extras)
        write_atomic(self.metrics_path, "".join(to_json(r) + "\n" for r in rows))

    def summary(self, status: str, error: str | None = None) -> dict:
        accs = [r["accuracy"] for r in self.rows]
        best = int(np.argmax(accs)) if accs else None
        return {
            "run_id": self.run_dir.name, "status": status, "error": error,
            "rounds": self.cfg.rounds, "rounds_completed": len(self.rows),
            "final_accuracy": accs[-1] if accs else None,
            "final_loss": self.rows[-1]["loss"] if accs else None,
            "best_accuracy": accs[best] if accs else None,
            "best_round": self.rows[best]["round"] if accs else None,
            "seconds": time.time() - self.started, "seed": self.cfg.seed,
            "scenario": self.cfg.scenario or self.cfg.scenario_file, "strategy": self.cfg.strategy.name,
            "dataset": self.cfg.dataset, "model": self.cfg.model.name,
            "num_clients": self.cfg.num_clients, "partition": self.cfg.partition.kind,
            "partition_counts": self.partition_counts, **({"site_names": self.site_names} if self.site_names else {}),
            "bytes": total_bytes(self.rows),
            "versions": versions(), "command": self.command, **self.extras,
            **({"error_file": self.error_file} if self.error_file and status != "completed" else {}),
            **({"client_errors": CLIENT_ERRORS_FILE} if (self.run_dir / CLIENT_ERRORS_FILE).exists() else {}),
            **({"warnings": WARNINGS_FILE} if (self.run_dir / WARNINGS_FILE).exists() else {}),
            **({"resume_with": f"python -m fedcls.simulate {shlex.quote(f'resume={self.run_dir}')}"}
               if status != "completed" and (self.run_dir / "checkpoint.pt").exists() else {}),
        }

    def write_summary(self, status: str, error: str | None = None) -> dict:
        summary = self.summary(status, error)
        write_atomic(self.run_dir / "summary.json", to_json(summary, indent=2))
        self.seconds = summary["seconds"]  # the run's one wall time so far, as summary.json says
        return summary

    def finish(self, status: str = "completed", state_dict=None, error: str | None = None) -> dict:
        """Write summary.json, plots and (if given) model.pt; return the summary."""
        summary, self.status = self.write_summary(status, error), status
        for tracker in self.trackers or []:
            tracker.finish(summary)
        self.trackers = []
        if state_dict is not None and self.cfg.save_model:
            import torch

            torch.save(state_dict, self.run_dir / "model.pt")
        if self.cfg.plots != "none":
            args = (list(self.rows), self.partition_counts, self.run_dir, self.cfg.to_dict(), self.extras)
            if not (_PLOTTERS and _draw_in_background(_PLOTTERS[-1], args)):
                draw_plots(*args)
        return summary


    def record_error(self, err: BaseException, status: str = "failed") -> Path:
        """Keep a failure's evidence: ERROR_FILE (run id, versions, command, the whole traceback)
        in the run folder, named by summary.json (rewritten with `status`); returns its path."""
        header = [f"run {self.run_dir.name} (run_id {self.cfg.run_id}) {status} at {datetime.now():%Y-%m-%d %H:%M:%S} "
                  f"after {len(self.rows)} of {self.cfg.rounds} rounds; its config: config.yaml",
                  "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
                  "command: " + self.command, ""]
        path = self.run_dir / ERROR_FILE
        write_atomic(path, "\n".join(header) + "".join(traceback.format_exception(err)))
        self.error_file = ERROR_FILE
        self.write_summary(status, f"{type(err).__name__}: {err}")
        return path

    def client_errors(self, rnd: int, failures: list[tuple[int, str, str]]) -> None:
        """Append the whole reasons of a round's failed client replies, (site, phase, reason) each,
        to CLIENT_ERRORS_FILE (metrics.jsonl and the console keep one line per failure)."""
        if failures:
            with (self.run_dir / CLIENT_ERRORS_FILE).open("a") as f:
                f.writelines(f"round {rnd}, site {site}, {phase}:\n{reason}\n\n" for site, phase, reason in failures)


def draw_plots(rows: list[dict], counts, run_dir: Path, cfg: dict, extras: dict) -> None:
    """A run's figures into run_dir/plots, in the formats its `plots` key names."""
    from fedcls.outputs.plot_style import file_formats
    from fedcls.outputs.plots import plot_run

    with file_formats(tuple(cfg["plots"].split("+"))):
        plot_run(rows, counts, run_dir / "plots", cfg, extras)


def draw_plots_or_say_why(*args) -> None:
    """draw_plots in the sweep's plotting process: a figure that fails is named on stderr (the
    run's results are written already; `python -m fedcls.report` draws a study's figures again)."""
    try:
        draw_plots(*args)
    except Exception as err:  # noqa: BLE001 - see the docstring
        print(f"warning: the plots of {args[2]} were not drawn: {type(err).__name__}: {err}", file=sys.stderr)


def _draw_in_background(pool, args: tuple) -> bool:
    """Queue a run's figures in the plotting process; False when it is gone (drawn here instead)."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        pool.submit(draw_plots_or_say_why, *args).add_done_callback(_say_if_lost)
    except (BrokenProcessPool, RuntimeError):
        return False
    return True


def _say_if_lost(future) -> None:
    if future.exception() is not None:  # the process died (killed, out of memory)
        print(f"warning: a run's plots were not drawn: {future.exception()!r}", file=sys.stderr)


def _plotter_starts() -> None:
    """The plotting process: Ctrl-C is the sweep's to handle (it then waits for the figures), and
    it draws on CPU time the runs leave idle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(19)


_PLOTTERS: list = []  # the open plots_in_background process pool, if any


@contextlib.contextmanager
def plots_in_background():
    """While inside (a sweep), each run's figures are drawn by one separate, lowest-priority process,
    so that the next run starts at once and its rounds keep the CPU (~1.3 s of PNGs per run,
    README "Measured"); a thread in this process would hold the GIL the round loop needs.
    Leaving waits for every figure, so a sweep that ends, or stops at Ctrl-C, leaves none undrawn."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_plotter_starts)
    _PLOTTERS.append(pool)
    try:
        yield
    finally:
        _PLOTTERS.remove(pool)
        pool.shutdown(wait=True)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what --cfg job prints and config.yaml holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
