"""Launch a run on Flower's Simulation Engine with the Ray backend."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from fedcls.engine.flower_patches import RayWithoutShutdown, replace_dead_actors
from fedcls.engine.logs import quiet_logs
from fedcls.outputs.results import Recorder


def backend_config(cfg: dict) -> dict:
    """Ray backend settings: client resources, and the cluster to attach to if any."""
    backend = cfg["backend"]
    init_args: dict = {"logging_level": logging.INFO if cfg["verbose"] else logging.WARNING,
                       "log_to_driver": bool(cfg["verbose"])}
    if backend["ray_address"]:
        init_args["address"] = backend["ray_address"]
    return {"client_resources": {"num_cpus": backend["num_cpus"], "num_gpus": backend["num_gpus"]},
            "init_args": init_args}


def simulate(cfg: dict, recorder: Recorder, resume: dict | None = None) -> None:
    """Run the configured federation as a Flower simulation on Ray (or, with
    backend.executor=cohort, with clients trained in cohorts on Ray actors)."""
    if cfg["backend"]["executor"] == "cohort":
        from fedcls.engine.cohort_grid import run_cohorts

        return run_cohorts(cfg, recorder, resume)
    quiet_logs(cfg["verbose"])
    replace_dead_actors()
    from flwr.simulation import run_simulation

    from fedcls.apps.client_app import app as client_app
    from fedcls.apps.server_app import make_server_app

    run_simulation(server_app=make_server_app(cfg, recorder, resume), client_app=client_app,
                   num_supernodes=cfg["num_clients"], backend_config=backend_config(cfg),
                   verbose_logging=cfg["verbose"])


@contextlib.contextmanager
def shared_ray(address: str | None = None, verbose: bool = False):
    """One Ray instance for several simulations in this process (a sweep).

    Flower's Ray backend starts Ray when it is not running and calls ray.shutdown() after every
    simulation; here Ray is started once and that one call is made a no-op for the duration.
    Client actors are still created per simulation (Flower terminates its actor pool).
    """
    quiet_logs(verbose)
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    pythonpath = os.pathsep.join(sys.path)  # as Flower's backend does, so actors import fedcls
    ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    raybackend.ray = RayWithoutShutdown(ray)
    try:
        yield
    finally:
        raybackend.ray = ray
        ray.shutdown()
