"""Shared by fedadam, fedyogi and fedadagrad (Reddi et al., "Adaptive Federated Optimization",
ICLR 2021): their parameters and how Flower's classes take them.

The clients' learning rate is the run's ``lr`` (the paper's eta_l): Flower's FedOpt classes accept
an ``eta_l`` but only print it, so it is not a strategy parameter here (a ``strategy.eta_l`` is
refused as an unknown key) and Flower is handed ``lr`` so its summary line is true."""

from __future__ import annotations

from fedcls.schema import Config
from strategies import Param


def fedopt_params(eta: float, betas: tuple[float, float] | None) -> dict[str, Param]:
    params = {"eta": Param(eta, "server learning rate", minimum=0.0)}
    if betas is not None:
        params["beta_1"] = Param(betas[0], "first-moment decay", minimum=0.0, maximum=1.0)
        params["beta_2"] = Param(betas[1], "second-moment decay", minimum=0.0, maximum=1.0)
    params["tau"] = Param(1e-3, "adaptivity (epsilon) of the server optimiser", minimum=0.0)
    return params


def build_fedopt(cls, params: dict, common: dict, cfg: Config):
    """Flower's FedOpt subclass `cls` with the run's parameters (eta_l: the clients' lr)."""
    return cls(**params, eta_l=cfg.lr, **common)
