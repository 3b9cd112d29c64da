"""MOON (Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021).

Client loss: CE + mu * l_con, l_con = -log(e^{sim(z, z_glob)/T} / (e^{sim(z, z_glob)/T} +
e^{sim(z, z_prev)/T})), with z the local model's representation, z_glob the received global
model's and z_prev the client's previous local model's (kept in the client's state; the global
model stands in before a client's first round); sim is cosine similarity.
The representation is the model's ``features`` output: every fedcls model has one (for simple_cnn
it is the fc120-fc84 MLP over the conv encoder, which plays MOON's projection head; resnet18 and
vit_tiny use their pooled features; mlp its second hidden layer). Server half: Flower's FedAvg.
"""

from __future__ import annotations

import copy

import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from fedcls.algorithms.training import Hook, TrainContext
from fedcls.schema import Config
from strategies import Capabilities, Param

PARAMS = {
    "mu": Param(0.1, "weight mu of the model-contrastive loss (results/studies/strategy_defaults)", minimum=0.0),
    "temperature": Param(0.5, "temperature T", minimum=1e-6),
}
MU_KEY, TEMP_KEY, STATE_KEY = "moon-mu", "moon-temperature", "moon"
CAPABILITIES = Capabilities(plain_mean=True)  # its server is FedAvg's mean


class Moon(FedAvg):
    def __init__(self, mu: float, temperature: float, **common):
        super().__init__(**common)
        self.mu, self.temperature = mu, temperature

    def configure_train(self, server_round, arrays, config, grid):
        config[MU_KEY], config[TEMP_KEY] = self.mu, self.temperature
        return super().configure_train(server_round, arrays, config, grid)


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return Moon(params["mu"], params["temperature"], **common)


def contrastive_loss(z, z_glob, z_prev, temperature: float) -> torch.Tensor:
    """Mean over the batch of l_con."""
    pos = torch.nn.functional.cosine_similarity(z, z_glob, dim=1) / temperature
    neg = torch.nn.functional.cosine_similarity(z, z_prev, dim=1) / temperature
    logits = torch.stack([pos, neg], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def _frozen(model: torch.nn.Module, weights: dict | None = None) -> torch.nn.Module:
    copy_ = copy.deepcopy(model)
    if weights is not None:
        copy_.load_state_dict(weights)
    copy_.eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


class ModelContrastive(Hook):
    def __init__(self, mu: float, temperature: float):
        self.mu, self.temperature = mu, temperature

    def before_training(self, ctx: TrainContext) -> None:
        self.global_model = _frozen(ctx.model)
        previous = ctx.state.get(STATE_KEY)
        self.prev_model = _frozen(ctx.model, previous) if previous else self.global_model

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor | None:
        if self.mu == 0.0:
            return None
        with torch.no_grad():
            z_glob = self.global_model.features(ctx.inputs)
            z_prev = self.prev_model.features(ctx.inputs)
        return self.mu * contrastive_loss(ctx.features, z_glob, z_prev, self.temperature)

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        ctx.state[STATE_KEY] = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        return {}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [ModelContrastive(float(config[MU_KEY]), float(config[TEMP_KEY]))]
