"""Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017): the average of the m client models with the best Krum scores.

Server half: Flower's MultiKrum. Client half: none.
"""

from flwr.serverapp.strategy import MultiKrum, Strategy

from fedcls.schema import Config
from strategies import Param

PARAMS = {
    "num_malicious": Param(0, "f, the number of Byzantine clients tolerated", minimum=0),
    "num_selected": Param(2, "m, the number of models averaged", minimum=1),
}


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return MultiKrum(num_malicious_nodes=params["num_malicious"],
                     num_nodes_to_select=params["num_selected"], **common)
