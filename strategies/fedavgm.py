"""FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification", 2019): server momentum on the averaged update.

Server half: Flower's FedAvgM. Client half: none.
"""

from flwr.serverapp.strategy import FedAvgM, Strategy

from fedcls.schema import Config
from strategies import Capabilities, Param

PARAMS = {
    "server_learning_rate": Param(1.0, "server learning rate applied to the averaged update", minimum=0.0),
    "server_momentum": Param(0.9, "server momentum beta", minimum=0.0, maximum=1.0),
}
CAPABILITIES = Capabilities(weighted_mean=True)  # the cohort executor may pre-aggregate


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedAvgM(server_learning_rate=params["server_learning_rate"],
                   server_momentum=params["server_momentum"], **common)
