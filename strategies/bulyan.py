"""Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
ICML 2018): Multi-Krum selection followed by a coordinate-wise trimmed mean; needs n >= 4f + 3.

Server half: Flower's Bulyan. Client half: none.
"""

from flwr.serverapp.strategy import Bulyan, Strategy

from fedcls.schema import Config
from strategies import Param

PARAMS = {"num_malicious": Param(0, "f, the number of Byzantine clients tolerated", minimum=0)}


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return Bulyan(num_malicious_nodes=params["num_malicious"], **common)


def check(cfg: Config) -> str | None:
    sampled = max(int(cfg.num_clients * cfg.fraction_train), 1)
    f = cfg.strategy.params["num_malicious"]
    if sampled < 4 * f + 3:
        return (f"strategy=bulyan needs at least 4*num_malicious+3 = {4 * f + 3} clients per round, "
                f"but num_clients*fraction_train gives {sampled}; raise num_clients or fraction_train")
    return None
