"""A sweep's grid points side by side (issue 19: "run side by side when the machine has the cores").

A run on the inprocess executor (fedcls.engine.inprocess) trains one client at a time in one
process, so a sweep of such runs gives each grid point a Ray actor of this machine, with
``backend.num_cpus`` CPUs (and ``backend.num_gpus``), runs as many points at once as its free
CPUs (GPUs) allow, and hands the next point, in grid order, to the first actor free. An actor runs
its point as the sweep would run it alone (fedcls.studies.sweep.run_point): the same run folder,
on the same torch threads, so the same numbers. Actors are pinned to the sweep's own node: the
run folders are written there. Ctrl-C stops every running point at its next safe point (its
rounds so far and its checkpoint kept, as for a run alone); a second Ctrl-C leaves at once and
the actors end with the driver.
Written by hand: Ray schedules the actors; which point goes where and when is this module's.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Callable

from fedcls.schema import Config

POLL_S = 0.2  # how often the driver looks at Ctrl-C while points run
RunPoint = Callable[..., tuple[str, dict]]  # fedcls.studies.sweep.run_point: (cfg, runs_dir, progress)


class PointRunner:
    """A Ray actor's body: runs one grid point at a time; ``stop`` (a second call, served while
    ``run`` works: max_concurrency=2) is this process's Ctrl-C."""

    def run(self, run_point: RunPoint, cfg_json: str, runs_dir: str) -> tuple[str, dict]:
        from fedcls.errors import STOP, Interrupted
        from fedcls.outputs.progress import Progress

        cfg = Config.from_dict(json.loads(cfg_json))
        if STOP.is_set():
            return "interrupted", {}
        try:
            return run_point(cfg, Path(runs_dir), Progress(cfg.rounds, echo=None))
        except Interrupted:
            summary = Path(runs_dir) / cfg.run_id / "summary.json"
            return "interrupted", json.loads(summary.read_text()) if summary.exists() else {}

    def stop(self) -> None:
        from fedcls.errors import STOP

        STOP.set()


def make_room(todo: list[Config]) -> int:
    """How many of `todo` run at once here: when all are on the inprocess executor, one per
    backend.num_cpus of this node's free CPUs, after ending the idle client actors a warm driver
    or an earlier run of the sweep holds them with (fedcls.engine.actor_reserve); 0: run them one
    after another in this process (a single point, another executor, or fewer than 2 free slots)."""
    import ray

    from fedcls.engine import actor_reserve

    if len(todo) < 2 or any(c.backend.executor != "inprocess" for c in todo):
        return 0
    actor_reserve.release()
    node = ray.get_runtime_context().get_node_id()
    here = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node), 0)
    free = ray.available_resources()
    count = min(len(todo), int(min(here, free.get("CPU", 0)) // max(todo[0].backend.num_cpus, 1)))
    if todo[0].backend.num_gpus > 0:  # each point's actor holds its GPU share, as a client actor would
        count = min(count, int(free.get("GPU", 0) // todo[0].backend.num_gpus))
    return count if count > 1 else 0


def _runner(backend):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(PointRunner).options(num_cpus=max(int(backend.num_cpus), 1), num_gpus=backend.num_gpus,
                                           max_concurrency=2, scheduling_strategy=here).remote()


def run_side_by_side(todo: list[tuple[str, Config]], runs_dir: Path, count: int, run_point: RunPoint,
                     started: Callable[[str], None], finished: Callable[[str, str, dict], None]) -> None:
    """Run `todo` ((run id, config) pairs) on `count` actors, each point by `run_point` (the
    sweep's, sent along: this module does not import the sweep that imports it); `started(run id)` and
    `finished(run id, status, summary)` report each point. Raises Interrupted after Ctrl-C once
    the running points have stopped."""
    import ray

    from fedcls.errors import STOP, Interrupted

    backend = todo[0][1].backend
    idle = [_runner(backend) for _ in range(count)]
    queue, running, stopping = deque(todo), {}, False
    try:
        while queue or running:
            while queue and idle and not STOP.is_set():
                run_id, cfg = queue.popleft()
                actor = idle.pop()
                running[actor.run.remote(run_point, json.dumps(cfg.to_dict()), str(runs_dir))] = (run_id, actor)
                started(run_id)
            if STOP.is_set() and not stopping:
                stopping = True
                for _, actor in running.values():
                    actor.stop.remote()
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for future in done:
                run_id, actor = running.pop(future)
                status, summary, actor = _outcome(future, actor, backend)
                idle.append(actor)
                finished(run_id, status, summary)
    finally:
        for actor in idle + [a for _, a in running.values()]:
            ray.kill(actor)
    if STOP.is_set():
        print(f"\ninterrupted; the stopped runs' rounds so far are in their folders under {runs_dir}; the same "
              f"command again finishes the study", file=sys.stderr, flush=True)
        raise Interrupted


def _outcome(future, actor, backend) -> tuple[str, dict, object]:
    """(status, summary, the actor for the next point: a new one if this one died)."""
    import ray

    try:
        status, summary = ray.get(future)
        return status, summary, actor
    except ray.exceptions.RayError as err:  # the actor died (OOM killer) or could not run the point
        return "failed", {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}, _runner(backend)
