"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): local
SGD on the loss plus the proximal term (mu/2) * ||w - w_global||^2.

Server half: Flower's FedProx, which sends mu as "proximal-mu" in the round's ConfigRecord.
Client half: ``ProximalTerm``, a hook in the one training loop. With mu = 0 the hook adds
nothing at all, so FedProx(mu=0) computes exactly FedAvg's numbers.
"""

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedProx, Strategy

from fedcls.algorithms.training import Hook, StepTerms
from fedcls.schema import Config
from strategies import Capabilities, Param

PARAMS = {"proximal_mu": Param(0.01, "weight mu of the proximal term", minimum=0.0)}
CAPABILITIES = Capabilities(weighted_mean=True, plain_mean=True)  # the cohort executor may pre-aggregate


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedProx(proximal_mu=params["proximal_mu"], **common)


class ProximalTerm(Hook):
    """(mu/2) * sum over parameters of ||w - w_global||^2 in the loss (the paper's h_k), as a
    StepTerm: the one step adds it (fedcls.algorithms.training.proximal_term), per client or vmapped."""

    def __init__(self, mu: float):
        self.mu = mu

    def step_terms(self) -> StepTerms:
        return StepTerms(prox_mu=self.mu)


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [ProximalTerm(float(config["proximal-mu"]))]
