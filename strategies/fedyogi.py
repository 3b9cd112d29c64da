"""FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): the averaged client update
is a pseudo-gradient for a server-side Yogi step.

Server half: Flower's FedYogi. Client half: none (local SGD with the run's lr; `eta_l` is only
recorded, as in Flower).
"""

from flwr.serverapp.strategy import FedYogi, Strategy

from strategies import Param

PARAMS = {
    "eta": Param(0.01, "server learning rate", minimum=0.0),
    "eta_l": Param(0.01, "client learning rate (informational; clients use lr)", minimum=0.0),
    "beta_1": Param(0.9, "first-moment decay", minimum=0.0, maximum=1.0),
    "beta_2": Param(0.99, "second-moment decay", minimum=0.0, maximum=1.0),
    "tau": Param(1e-3, "adaptivity (epsilon) of the server optimiser", minimum=0.0),
}


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return FedYogi(eta=params["eta"], eta_l=params["eta_l"], tau=params["tau"], beta_1=params["beta_1"], beta_2=params["beta_2"], **common)
