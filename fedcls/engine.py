"""Launch a run on Flower's Simulation Engine with the Ray backend."""

from __future__ import annotations

import logging
import os
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


def simulate(cfg: dict, recorder: Recorder) -> None:
    """Run the configured federation as a Flower simulation on Ray."""
    quiet_logs(cfg["verbose"])
    from flwr.simulation import run_simulation

    from fedcls.client_app import app as client_app
    from fedcls.server_app import make_server_app

    run_simulation(server_app=make_server_app(cfg, recorder), client_app=client_app,
                   num_supernodes=cfg["num_clients"], backend_config=backend_config(cfg),
                   verbose_logging=cfg["verbose"])
