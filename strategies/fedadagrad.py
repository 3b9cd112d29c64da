"""FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): the averaged client update
is a pseudo-gradient for a server-side Adagrad step.

Server half: Flower's FedAdagrad. Client half: none (local SGD with the run's lr; `eta_l` is only
recorded, as in Flower).
"""

from flwr.serverapp.strategy import FedAdagrad, Strategy

from strategies import Param

PARAMS = {
    "eta": Param(0.1, "server learning rate", minimum=0.0),
    "eta_l": Param(0.01, "client learning rate (informational; clients use lr)", minimum=0.0),
    "tau": Param(1e-3, "adaptivity (epsilon) of the server optimiser", minimum=0.0),
}


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return FedAdagrad(eta=params["eta"], eta_l=params["eta_l"], tau=params["tau"], **common)
