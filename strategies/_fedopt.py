"""Shared by fedadam, fedyogi and fedadagrad (Reddi et al., "Adaptive Federated Optimization",
ICLR 2021): their parameters and how Flower's classes take them."""

from __future__ import annotations

from strategies import Param


def fedopt_params(eta: float, betas: tuple[float, float] | None) -> dict[str, Param]:
    params = {"eta": Param(eta, "server learning rate", minimum=0.0),
              "eta_l": Param(0.01, "client learning rate (informational; clients use lr)", minimum=0.0)}
    if betas is not None:
        params["beta_1"] = Param(betas[0], "first-moment decay", minimum=0.0, maximum=1.0)
        params["beta_2"] = Param(betas[1], "second-moment decay", minimum=0.0, maximum=1.0)
    params["tau"] = Param(1e-3, "adaptivity (epsilon) of the server optimiser", minimum=0.0)
    return params


def build_fedopt(cls, params: dict, common: dict):
    """Flower's FedOpt subclass `cls` with the run's parameters."""
    return cls(**params, **common)
