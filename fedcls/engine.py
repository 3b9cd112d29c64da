"""Launch a run on Flower's Simulation Engine with the Ray backend."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from fedcls.results import Recorder


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated" not in record.getMessage().lower()


def quiet_logs(verbose: bool) -> None:
    """Flower and Ray at warnings (and without run_simulation's deprecation notice) unless verbose."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if verbose:
        return
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(_DropDeprecation())
    for handler in flwr_logger.handlers:
        handler.addFilter(_DropDeprecation())
    logging.getLogger("ray").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


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
        from fedcls.cohort.grid import run_cohorts

        return run_cohorts(cfg, recorder, resume)
    quiet_logs(cfg["verbose"])
    replace_dead_actors()
    from flwr.simulation import run_simulation

    from fedcls.client_app import app as client_app
    from fedcls.server_app import make_server_app

    run_simulation(server_app=make_server_app(cfg, recorder, resume), client_app=client_app,
                   num_supernodes=cfg["num_clients"], backend_config=backend_config(cfg),
                   verbose_logging=cfg["verbose"])


def replace_dead_actors() -> None:
    """Make Flower's actor pool replace an actor that died (OOM killer, ray.kill) with a new one.

    Flower 1.42's BasicActorPool puts the actor of a failed job back into the pool even when the
    actor is dead, and every later message sent to it fails. Here the failing message still
    fails (its client's work is lost for the round), and a fresh actor takes the dead one's place.
    """
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if getattr(BasicActorPool, "_fedcls_replaces_dead", False):
        return
    fetch, put_back = BasicActorPool.fetch_result_and_return_actor_to_pool, BasicActorPool.add_actor_back_to_pool

    def fetch_marking_dead(self, future):
        try:
            return fetch(self, future)
        except ray.exceptions.RayActorError:
            self.__dict__.setdefault("_dead_futures", set()).add(future)
            raise

    def put_back_alive(self, future) -> None:
        if future in self.__dict__.get("_dead_futures", ()):
            self._dead_futures.discard(future)
            self._future_to_actor.pop(future, None)
            self.pool.append(self.create_actor_fn())
            return
        put_back(self, future)

    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_marking_dead
    BasicActorPool.add_actor_back_to_pool = put_back_alive
    BasicActorPool._fedcls_replaces_dead = True


class _RayWithoutShutdown:
    """The ray module, except that shutdown() does nothing (see shared_ray)."""

    def __init__(self, ray_module):
        self._ray = ray_module

    def __getattr__(self, name):
        return getattr(self._ray, name)

    def shutdown(self, *args, **kwargs) -> None:
        return None


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
    raybackend.ray = _RayWithoutShutdown(ray)
    try:
        yield
    finally:
        raybackend.ray = ray
        ray.shutdown()
