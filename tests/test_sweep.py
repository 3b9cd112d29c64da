"""A real sweep, killed midway and started again."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def finished(summary_path) -> bool:
    """summary.json says completed (during a run it says interrupted, after every round)."""
    try:
        return json.loads(summary_path.read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    args = [sys.executable, "-m", "fedcls.sweep", f"output_dir={tmp_path}", "seed=0,1,2",
            "num_clients=2", "rounds=1", "local_epochs=1", "save_model=false"]
    sweep = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    first = tmp_path / "runs" / "seed-0" / "summary.json"
    deadline = time.time() + 240
    while not finished(first) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and everything it started
    sweep.wait()
    assert first.exists(), "the first run never finished"
    finished_at = first.stat().st_mtime_ns

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    done_before = int(again.stdout.split(" already done")[0].rsplit(", ", 1)[1])
    assert done_before >= 1 and "3 of 3 runs finished" in again.stdout
    assert first.stat().st_mtime_ns == finished_at  # not redone
    for seed in range(3):
        summary = json.loads((tmp_path / "runs" / f"seed-{seed}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == seed


def test_an_interrupted_sweep_run_continues_only_with_its_own_config_and_a_good_checkpoint(tmp_path):
    import torch

    from fedcls.config import compose
    from fedcls.outputs.results import to_yaml
    from fedcls.studies.sweep import _resumable

    cfg = compose(["num_clients=3"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert not _resumable(tmp_path, cfg)  # no checkpoint yet
    torch.save({"round": 1, "strategy": pickle.dumps(None), "extensions": pickle.dumps([])},
               tmp_path / "checkpoint.pt")  # the pickled format of version 1: never loaded, so started again
    assert not _resumable(tmp_path, cfg)
    torch.save({"version": 2, "round": 1, "strategy": {}, "extensions": []}, tmp_path / "checkpoint.pt")
    assert _resumable(tmp_path, cfg)
    assert not _resumable(tmp_path, compose(["num_clients=4"]))  # another config: start again
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    assert not _resumable(tmp_path, cfg)
