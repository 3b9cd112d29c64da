"""Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017): the client model closest to its n - f - 2 nearest neighbours.

Server half: Flower's Krum. Client half: none.
"""

from flwr.serverapp.strategy import Krum, Strategy

from fedcls.schema import Config
from strategies import Param

PARAMS = {"num_malicious": Param(0, "f, the number of Byzantine clients tolerated", minimum=0)}


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return Krum(num_malicious_nodes=params["num_malicious"], **common)
