"""Grid points side by side (fedcls.studies.side_by_side): real Ray actors of this machine, each
running its point as the sweep runs one alone; Ctrl-C stops the running points, and no other
starts. In this process. (Their numbers equal a run alone: tests/test_e2e.py.)"""

import json
import os
import threading
import time

import pytest

from fedcls.config import compose
from fedcls.engine import actor_reserve
from fedcls.errors import STOP, Interrupted
from fedcls.studies.side_by_side import make_room, run_side_by_side
from fedcls.studies.sweep import point_config, run_point

pytestmark = pytest.mark.e2e
COMMON = ["backend.executor=inprocess", "num_clients=3", "model=mlp", "rounds=40", "local_epochs=1",
          "save_model=false", "plots=none"]


def rows_of(run_dir) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stop_once_both_have_a_round(run_dirs: list, timeout: float = 120) -> None:
    """Ctrl-C, as the sweep's handler gives it, once every run in `run_dirs` has written a round."""
    deadline = time.time() + timeout
    while time.time() < deadline and not all(rows_of(d) for d in run_dirs):
        time.sleep(0.1)
    STOP.set()


def test_points_run_side_by_side_and_ctrl_c_stops_the_running_ones(tmp_path):
    from fedcls.engine.simulation import shared_ray

    runs = tmp_path / "runs"
    configs = [point_config(COMMON, [f"seed={seed}"], runs) for seed in range(3)]
    cpus = os.cpu_count() or 1
    at_once = 2 if cpus >= 2 else 1  # one machine's CPUs: two points at once where there are two
    events: list[tuple[str, str]] = []

    def started(run_id: str) -> None:
        events.append(("started", run_id))
        if len(events) == at_once:  # every actor busy: Ctrl-C once each running point has a round
            threading.Thread(target=stop_once_both_have_a_round, args=([runs / e[1] for e in events],)).start()

    def finished(run_id: str, status: str, summary: dict) -> None:
        events.append((status, run_id))

    try:
        with shared_ray(first=compose(["num_clients=3", "model=mlp"])):  # warm client actors hold the CPUs
            assert make_room(configs) == (min(3, cpus) if cpus >= 2 else 0)  # ... until it ends them
            assert actor_reserve._reserve == {}
            assert make_room(configs[:1]) == 0  # one point: it runs in the sweep's process
            assert make_room([configs[0], compose(["num_clients=3"])]) == 0  # a clientapp point: one after another
            with pytest.raises(Interrupted):
                run_side_by_side([(c.run_id, c) for c in configs], runs, at_once, run_point, started, finished)
    finally:
        STOP.clear()
    running = [c.run_id for c in configs[:at_once]]
    assert events[:at_once] == [("started", run_id) for run_id in running]
    assert sorted(events[at_once:]) == [("interrupted", run_id) for run_id in running]  # no other started
    assert not any((runs / c.run_id).exists() for c in configs[at_once:])
    for run_id in running:
        summary = json.loads((runs / run_id / "summary.json").read_text())
        assert summary["status"] == "interrupted" and 1 <= len(rows_of(runs / run_id)) < 40
