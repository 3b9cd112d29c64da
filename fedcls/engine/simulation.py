"""Launch a run on Flower's Simulation Engine with the Ray backend.

Ctrl-C stops a run at its next step (fedcls.errors.ctrl_c_deferred: the first Ctrl-C only sets
``STOP``): the round loop's grid (StoppableGrid) raises at its next call once it is set, so the loop
ends after whatever it was writing (a metrics line, a checkpoint), its summary says interrupted,
Flower and Ray shut down as after a completed run, and then the runner reports the interruption
(exit 130). In-process callers without that handler can set `stop` themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

from fedcls.data.federated import FederatedData
from fedcls.engine import actor_reserve
from fedcls.engine.flower_patches import RayWithoutShutdown, replace_dead_actors, serve_many_nodes
from fedcls.engine.lifecycle import ServerStopped, StoppableGrid, ray_dies_with_driver, ray_started
from fedcls.engine.logs import quiet_logs, quiet_warnings
from fedcls.errors import STOP
from fedcls.outputs.results import Recorder
from fedcls.schema import Config

STOP_WAIT_S = 10.0  # how long a stopped run waits for its ServerApp thread to end


def ray_init_kwargs(address: str | None, verbose: bool) -> dict:
    """ray.init's arguments as Flower's Ray backend passes them (backend_config plus the
    runtime_env Flower's backend adds), so that a Ray started here is the one Flower would start."""
    pythonpath = os.pathsep.join(sys.path)  # as Flower's backend does, so that actors import fedcls
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    kwargs = {"include_dashboard": False, "log_to_driver": verbose,
              "logging_level": logging.INFO if verbose else logging.WARNING,
              "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    return {**kwargs, "address": address} if address else kwargs


def backend_config(cfg: Config) -> dict:
    """Ray backend settings: client resources, and the cluster to attach to if any."""
    backend = cfg.backend
    init_args = ray_init_kwargs(backend.ray_address, bool(cfg.verbose))
    del init_args["runtime_env"]  # Flower's backend sets it, as ray_init_kwargs does
    return {"client_resources": actor_reserve.client_resources(backend), "init_args": init_args}


def simulate(cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None = None) -> None:
    """Run the configured federation as a Flower simulation on Ray (or, with
    backend.executor=cohort, with clients trained in cohorts on Ray actors; with
    backend.executor=inprocess, with the ClientApp called in this process). An exception
    leaving it has ``server_running`` True when the ServerApp thread did not stop in time."""
    with quiet_warnings(cfg.verbose):
        if cfg.backend.executor == "inprocess":
            from fedcls.engine.inprocess import run_inprocess

            run_inprocess(cfg, data, recorder, resume, STOP)
        elif cfg.backend.executor == "cohort":
            from fedcls.engine.cohort_grid import run_cohorts

            actor_reserve.release()  # a sweep's warm client actors hold the CPUs the cohorts need
            run_cohorts(cfg, data, recorder, resume, STOP)
        elif cfg.backend.keep_actors and not actor_reserve.keeping.active():
            with shared_ray(cfg.backend.ray_address, cfg.verbose, first=cfg) as (actors, kept):
                recorder.progress.phase("ray", f"{ray_started(cfg.backend.ray_address)}; {actors} client actors, "
                                               f"{kept} of them kept warm by an earlier run")
                _flower_simulation(cfg, data, recorder, resume, STOP)
        else:
            _flower_simulation(cfg, data, recorder, resume, STOP)
    if STOP.is_set():  # the round loop stopped at Ctrl-C (or the run had just completed)
        raise ServerStopped


def _flower_simulation(cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None,
                       stop: threading.Event) -> None:
    quiet_logs(cfg.verbose)
    replace_dead_actors()
    actor_reserve.install()  # fedcls's SiteActor, and a sweep's or a kept run's warm actors
    serve_many_nodes()  # messages queued in one pass; each node's site known, no roll call
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedcls.apps.client_app import app as client_app

    running = threading.Lock()
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        serve(grid, cfg, data, recorder, resume, stop, running)

    ray_dies_with_driver(cfg.backend.ray_address)
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.num_clients,
                       backend_config=backend_config(cfg), verbose_logging=cfg.verbose)
    except BaseException as err:
        asked = stop.is_set()  # Ctrl-C came first
        stop.set()  # the ServerApp thread ends at its next grid call
        stopped = running.acquire(timeout=STOP_WAIT_S)
        if stopped:
            running.release()
            if not asked and not isinstance(err, KeyboardInterrupt):
                stop.clear()  # the failure's stop, not the user's: the next run in this process (a sweep's) goes on
        err.server_running = not stopped  # type: ignore[attr-defined]  # see fedcls.engine.runner
        raise


def serve(grid, cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None,
          stop: threading.Event, running: threading.Lock) -> None:
    """The ServerApp's body: the recorded federation over a StoppableGrid, holding `running`."""
    from fedcls.apps.server_app import run_and_record

    recorder.progress.phase("flower", "simulation engine started: its ServerApp runs, its actor pool takes the sites' actors")
    with running:
        try:
            run_and_record(StoppableGrid(grid, stop, recorder.progress.replies), cfg, data, recorder, resume)
        except ServerStopped:
            pass  # the run was stopped from the main thread, which reports it


@contextlib.contextmanager
def shared_ray(address: str | None = None, verbose: bool = False, first: Config | None = None):
    """One Ray instance, and one set of client actors, for several simulations in this process (a
    sweep).

    Flower's Ray backend starts Ray when it is not running and calls ray.shutdown() after every
    simulation; here Ray is started once and that one call is made a no-op for the duration.
    Client actors (for the `first` run's backend.num_cpus/num_gpus, preparing its data) start at
    once and pass from each run's pool to the next (fedcls.engine.actor_reserve); yields how
    many, and how many of them an earlier command kept (backend.keep_actors).
    """
    if actor_reserve.keeping.active():  # inside a warm driver's (fedcls.engine.warm_driver): use its Ray
        yield actor_reserve.warm(first) if first is not None else (0, 0)
        return
    quiet_logs(verbose)
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    ray_dies_with_driver(address)
    with quiet_warnings(verbose):
        ray.init(**ray_init_kwargs(address, verbose))
    raybackend.ray = RayWithoutShutdown(ray)
    try:
        with actor_reserve.keeping():
            yield actor_reserve.warm(first) if first is not None else (0, 0)
    finally:
        raybackend.ray = ray
        ray.shutdown()
