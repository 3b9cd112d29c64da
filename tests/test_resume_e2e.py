"""A run whose driver is killed with SIGKILL after round 3 of 6 leaves no Ray process behind for
long, resumes from its checkpoint, and its rounds equal an uninterrupted run's, to the last digit
(SCAFFOLD: server and client state both matter)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e
ARGS = ["strategy=scaffold", "scenario=dirichlet_0.5", "num_clients=4", "fraction_train=0.75", "rounds=6",
        "local_epochs=1", "model=mlp", "fraction_evaluate=0.5", "save_model=false"]
SAME = ("round", "accuracy", "loss", "train", "clients", "sampled", "trained", "failures", "faults")


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def uninterrupted_rows(tmp_path, monkeypatch) -> list[dict]:
    """The same config run without interruption, in-process through the ClientApp's functions
    (the Ray simulation's path, to the last digit: tests/test_deployment_e2e.py)."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import compose
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose(ARGS)
    recorder = Recorder(tmp_path / "whole", cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)]), cfg, federated_data(cfg), recorder)
    return recorder.rows


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not gone, not a zombie)."""
    running = []
    for pid in pids:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def test_a_killed_run_resumes_exactly(tmp_path, cli, monkeypatch):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedcls.simulate", *ARGS, f"output_dir={killed.parent}",
                             "run_id=run"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (killed / "metrics.jsonl").exists() and len(rows_of(killed)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        started = descendants(proc.pid)  # Ray's GCS, raylet, agents and client actors
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
        proc.wait()
        deadline = time.time() + 30  # Ray's defaults left its agents waiting 60 s for the dead GCS
        while alive(started) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive(started), f"Ray processes outlived the killed driver: {alive(started)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    summary, lines = json.loads((killed / "summary.json").read_text()), len(rows_of(killed))
    assert 3 <= lines < 6  # whole lines only
    # written right after each round's line: the kill may fall between the two
    assert summary["status"] == "interrupted" and summary["rounds_completed"] in (lines - 1, lines)
    assert "resume=" in summary["resume_with"]

    resumed = cli(f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after round" in resumed.stdout
    got, want = rows_of(killed), uninterrupted_rows(tmp_path, monkeypatch)
    assert [[r[k] for k in SAME] for r in got] == [[r[k] for k in SAME] for r in want]
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"
    assert not (killed / "client_state").exists()  # removed once the run completed
