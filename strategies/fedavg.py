"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017): the example-weighted average of the sampled clients' models.

Server half: Flower's FedAvg as it is. Client half: none (plain local SGD).
"""

from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.schema import Config
from strategies import Capabilities

PARAMS: dict = {}
CAPABILITIES = Capabilities(weighted_mean=True, plain_mean=True)  # the cohort executor may pre-aggregate


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedAvg(**common)
