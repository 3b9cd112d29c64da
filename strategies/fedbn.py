"""FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021): BatchNorm weights and statistics stay at each site; the rest is
averaged as in FedAvg.

Client half: ``LocalBatchNorm`` declares the BatchNorm tensors local (they are never sent), puts
the site's own back before training and evaluation (a site's first time: BatchNorm as
initialised) and keeps them in the client's state. Server half: Flower's FedAvg, which only ever
sees the other tensors. Needs a model with BatchNorm: simple_cnn_bn, or resnet18 with
model.norm=batch. The server's global accuracy uses BatchNorm as initialised; judge FedBN by the
sites' local test accuracy (metrics.jsonl "clients").
"""

from __future__ import annotations

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fedcls.training import Hook, TrainContext

PARAMS: dict = {}
STATE_KEY = "fedbn"
BN_MODELS = "model=simple_cnn_bn, or model=resnet18 with model.norm=batch"


def build_server(params: dict, common: dict, cfg: dict) -> Strategy:
    return FedAvg(**common)


def check(cfg: dict) -> str | None:
    model = cfg["model"]
    if model["name"] == "simple_cnn_bn" or (model["name"] == "resnet18" and model["norm"] == "batch"):
        return None
    return f"strategy=fedbn needs a model with BatchNorm; {model['name']} has none: use {BN_MODELS}"


def batchnorm_keys(model: nn.Module) -> set[str]:
    """state_dict keys of every BatchNorm layer (weights, biases, running statistics)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys |= {f"{name}.{k}" for k in module.state_dict()}
    return keys


def restore(model: nn.Module, saved: dict | None) -> None:
    """Put the site's BatchNorm tensors back, or reset them to their initial values."""
    if saved:
        model.load_state_dict(saved, strict=False)
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()


class LocalBatchNorm(Hook):
    def local_keys(self, model: nn.Module) -> set[str]:
        return batchnorm_keys(model)

    def before_evaluate(self, model: nn.Module, state: dict) -> None:
        restore(model, state.get(STATE_KEY))

    def before_training(self, ctx: TrainContext) -> None:
        restore(ctx.model, ctx.state.get(STATE_KEY))

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        weights = ctx.model.state_dict()
        ctx.state[STATE_KEY] = {k: weights[k].detach().clone() for k in batchnorm_keys(ctx.model)}
        return {}


def client_hooks(config: ConfigRecord, inbox: dict) -> list[Hook]:
    return [LocalBatchNorm()]


def evaluation_hooks() -> list[Hook]:
    return [LocalBatchNorm()]
