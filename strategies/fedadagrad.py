"""FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): the averaged client update
is a pseudo-gradient for a server-side Adagrad step.

Server half: Flower's FedAdagrad. Client half: none (local SGD with the run's lr).
"""

from flwr.serverapp.strategy import FedAdagrad, Strategy

from fedcls.schema import Config
from strategies import Capabilities
from strategies._fedopt import build_fedopt, fedopt_params

PARAMS = fedopt_params(eta=0.01, betas=None)  # eta: results/studies/strategy_defaults
CAPABILITIES = Capabilities(weighted_mean=True)  # the cohort executor may pre-aggregate


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return build_fedopt(FedAdagrad, params, common, cfg)
