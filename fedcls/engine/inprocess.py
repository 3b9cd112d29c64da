"""``backend.executor=inprocess``: the ClientApp answers every message in this process, no Ray.

Flower's ClientApp object (``fedcls.apps.client_app.app``, its mods included: SecAgg+, DP
clipping) is called on each message in turn, as a client actor of the clientapp executor calls it,
on ``backend.num_cpus`` torch threads as each such actor trains: the same numbers, without Ray's
start-up (~4 s on 2 cores) or its per-message hop. It trains one client at a time; a sweep of
such runs runs its grid points side by side, one per ``backend.num_cpus`` CPUs
(fedcls.studies.side_by_side). Written by hand: Flower 1.42's simulation engine has only a Ray
backend. The round loop and strategies are the ones every executor runs (fedcls.apps.federation)
over a CohortGrid, the cohort executor's grid, with one worker here.
"""

from __future__ import annotations

import copy
import threading

from flwr.app import Message

from fedcls.apps.cohort.worker import CohortWorker
from fedcls.data.federated import FederatedData
from fedcls.schema import Config


class ClientAppWorker(CohortWorker):
    """Every message through the ClientApp object, as Flower's Ray actors call it; each site's
    Context (its client state) kept here between rounds."""

    def __init__(self):
        super().__init__(per_client=True)

    def _single(self, site: int, msg: Message) -> Message:
        from fedcls.apps.client_app import app

        # its own copy, as a transport delivers it: the server sends every site the same records
        # and Flower's SecAgg+ mod pops keys from them (the arrays' bytes are shared, not copied)
        return app(copy.deepcopy(msg), self.context(site))


def run_inprocess(cfg: Config, data: FederatedData, recorder, resume: dict | None = None,
                  stop: threading.Event | None = None) -> None:
    """A simulation whose clients answer in this process (see module docstring); once `stop` is
    set (Ctrl-C) the round loop ends at its next grid call."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedcls.apps.server_app import run_and_record
    from fedcls.apps.torch_settings import applied_within
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.engine.lifecycle import StoppableGrid
    from fedcls.engine.logs import quiet_logs

    quiet_logs(cfg.verbose)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
    recorder.progress.phase("clients", f"the ClientApp answers in this process, one client at a time on "
                                       f"{max(int(cfg.backend.num_cpus), 1)} torch thread(s); no Ray")
    grid = CohortGrid(cfg.num_clients, [ClientAppWorker()], recorder.echo)
    grid.on_replies = recorder.progress.replies
    with applied_within(cfg.backend.num_cpus, cfg.backend.tf32):  # the threads a client actor trains on
        run_and_record(StoppableGrid(grid, stop or threading.Event()), cfg, data, recorder, resume)
