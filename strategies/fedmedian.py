"""FedMedian (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018): the coordinate-wise median of the client models.

Server half: Flower's FedMedian. Client half: none.
"""

from flwr.serverapp.strategy import FedMedian, Strategy

from fedcls.schema import Config

PARAMS: dict = {}


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedMedian(**common)
