"""The cohort executor's Grid: Flower's seam between a strategy and its transport. Strategies
and the round loop (fedcls.apps.federation) are unchanged and see one reply per client; underneath,
site s's messages go to worker s mod W (a Ray actor holding that site's state), one call per
worker per round. The messages of one call share the strategy's weights object, so Ray's
pickling sends the global weights to an actor once per round, not once per client.

``run_cohorts(cfg, data, recorder)`` runs a whole simulation this way (``backend.executor=cohort``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Iterable

from flwr.app import Message

from fedcls.apps.cohort.worker import CohortWorker, error_reply
from fedcls.data.federated import FederatedData
from fedcls.schema import BackendConfig, Config


class CohortGrid:
    """Sites 0..n-1 as nodes 1..n, served by `workers` (Ray actor handles or plain workers)."""

    def __init__(self, num_sites: int, workers: list, echo=print, respawn=None):
        self.num_sites, self.workers, self.echo = num_sites, workers, echo
        self.respawn = respawn  # makes a new worker when one died (Ray actors)
        self.on_replies = None  # told how many sites answered so far (fedcls.outputs.progress)
        self._noticed: set[str] = set()

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_sites + 1))

    def simulated_sites(self) -> dict[int, int]:
        """{node id: site}: known here, so the round loop needs no roll call (fedcls.apps.federation)."""
        return {node: node - 1 for node in self.get_node_ids()}

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        batches: dict[int, list[tuple[int, int, Message]]] = {}
        for i, msg in enumerate(messages):
            site = msg.metadata.dst_node_id - 1
            batches.setdefault(site % len(self.workers), []).append((i, site, msg))
        calls = {w: self._call(self.workers[w], [(site, msg) for _, site, msg in batch])
                 for w, batch in batches.items()}
        replies: list[Message | None] = [None] * len(messages)
        for w, batch in batches.items():
            try:
                answers, notices = self._result(calls[w])
            except Exception as err:  # noqa: BLE001 - e.g. the actor was OOM-killed
                if self.respawn is None:
                    raise
                # its clients' work fails this round; a new actor serves its sites from now on
                # (their state: from the last checkpoint's client state files, if any)
                self.workers[w] = self.respawn()
                answers = [error_reply(msg, err) for _, _, msg in batch]
                notices = []
            for (i, _, _), reply in zip(batch, answers):
                replies[i] = reply
            self._notice(notices)
            if self.on_replies is not None:
                self.on_replies(sum(r is not None for r in replies))
        return replies

    def _notice(self, notices: list[str]) -> None:
        """One line per reason a client trained alone (not one per client and round)."""
        for line in notices:
            reason = line.split(": ", 1)[-1]
            if reason not in self._noticed:
                self._noticed.add(reason)
                self.echo(f"fedcls: cohort executor: {line} (this reason is reported once)")

    @staticmethod
    def _call(worker, items):
        """Start the worker's call (a Ray future; in-process: a deferred call)."""
        return worker.process.remote(items) if hasattr(worker.process, "remote") else (lambda: worker.process(items))

    @staticmethod
    def _result(call):
        if callable(call):
            return call()
        import ray

        return ray.get(call)


def _actors(backend: BackendConfig, count: int) -> list:
    import ray

    remote = ray.remote(CohortWorker).options(num_cpus=backend.num_cpus, num_gpus=backend.num_gpus)
    return [remote.remote() for _ in range(count)]


def run_cohorts(cfg: Config, data: FederatedData, recorder, resume: dict | None = None,
                stop: threading.Event | None = None) -> None:
    """A simulation whose clients train in cohorts on Ray actors (see module docstring); once
    `stop` is set (Ctrl-C) the round loop ends at its next grid call."""
    import ray
    from flwr.supercore.task_identity import TaskIdentity

    from fedcls.apps.server_app import run_and_record
    from fedcls.engine.lifecycle import StoppableGrid, ray_dies_with_driver, ray_started
    from fedcls.engine.logs import quiet_logs

    quiet_logs(cfg.verbose)
    started_here = not ray.is_initialized()
    if started_here:
        ray_dies_with_driver(cfg.backend.ray_address)
        ray.init(address=cfg.backend.ray_address, include_dashboard=False, log_to_driver=cfg.verbose,
                 logging_level=logging.INFO if cfg.verbose else logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path),
                                           "OMP_NUM_THREADS": str(max(int(cfg.backend.num_cpus), 1))}})
        recorder.progress.phase("ray", ray_started(cfg.backend.ray_address))
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
    workers = _actors(cfg.backend, cfg.backend.cohort_actors)
    try:
        grid = CohortGrid(cfg.num_clients, workers, recorder.echo, respawn=lambda: _actors(cfg.backend, 1)[0])
        grid.on_replies = recorder.progress.replies
        run_and_record(StoppableGrid(grid, stop or threading.Event()), cfg, data, recorder, resume)
    finally:
        for actor in workers:
            ray.kill(actor)
        if started_here:
            ray.shutdown()

