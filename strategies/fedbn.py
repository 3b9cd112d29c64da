"""FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021): BatchNorm weights and statistics stay at each site; the rest is
averaged as in FedAvg.

Client half: ``LocalBatchNorm`` declares the BatchNorm tensors local (they are never sent), puts
the site's own back before training and evaluation (a site's first time: BatchNorm as
initialised) and keeps them in the client's state; a site that never trains (a held-out
target) evaluates with BatchNorm statistics of its own unlabelled data (AdaBN). Server half: Flower's FedAvg, which only ever
sees the other tensors. Needs a model with BatchNorm: simple_cnn_bn, or resnet18 with
model.norm=batch. The server's global accuracy uses BatchNorm as initialised; judge FedBN by the
sites' local test accuracy (metrics.jsonl "clients").
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fedcls.algorithms.training import Hook, TrainContext
from fedcls.schema import Config
from strategies import Capabilities

PARAMS: dict = {}
STATE_KEY = "fedbn"
CAPABILITIES = Capabilities(needs_batchnorm=True)


def build_server(params: dict, common: dict, cfg: Config) -> Strategy:
    return FedAvg(**common)


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


@torch.no_grad()
def adapt_statistics(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """AdaBN (Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", 2016):
    BatchNorm statistics of a site that never trained, from its own unlabelled images (the
    cumulative average over its data); the affine weights stay as initialised."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


class LocalBatchNorm(Hook):
    def local_keys(self, model: nn.Module) -> set[str]:
        return batchnorm_keys(model)

    def before_evaluate(self, model: nn.Module, state: dict, unlabelled=None) -> None:
        restore(model, state.get(STATE_KEY))
        if not state.get(STATE_KEY) and unlabelled is not None and len(unlabelled):
            adapt_statistics(model, unlabelled)  # a site that never trained: a held-out target

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
