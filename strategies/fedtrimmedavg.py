"""FedTrimmedAvg (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018): the coordinate-wise mean after cutting the beta fraction at each end.

Server half: Flower's FedTrimmedAvg. Client half: none.
"""

from flwr.serverapp.strategy import FedTrimmedAvg, Strategy

from fedcls.schema import Config
from strategies import Param

PARAMS = {"beta": Param(0.2, "fraction trimmed at each end", minimum=0.0, maximum=0.49)}


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedTrimmedAvg(beta=params["beta"], **common)
