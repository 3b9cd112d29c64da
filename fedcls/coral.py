"""Federated Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV-W 2016): source sites align the second-order statistics of their penultimate
features to the target's, sharing covariance statistics, never images.

Protocol, every round (``coral.enabled=true``):
  1. before training, the server sends the global weights to the statistics sites -- the target
     sites (``coral.mode=target``) or every site (``pooled``) -- which reply with the count,
     mean and covariance of their unlabelled training features under that model;
  2. the server pools them into the statistics of the union (``pool``) and sends the pooled
     mean and covariance with every train message (named record ``coral.stats``);
  3. each training site adds ``coral.lambda`` * CORAL(its batch features, pooled covariance) to
     its loss (``CoralHook``, a hook in the one client loop).
What a site shares per round: n, a d-vector mean and a d x d covariance of its features (d = 84
for simple_cnn, 128 for mlp). No images or labels; but a covariance of a few samples reveals
much about them, and n reveals the site's size (see README, "What CORAL shares").

Written by hand: Flower and Avalanche have no CORAL; the loss is the paper's formula.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcls.extensions import Extension
from fedcls.training import Hook, TrainContext

STATS_RECORD = "coral.stats"  # train-message record: the pooled mean and covariance
REQUEST = "coral-request"      # query-message config entry asking a site for its statistics


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d x d) of the rows of x (n x d)."""
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(len(x) - 1, 1)


def coral_loss(source: torch.Tensor, target_cov: torch.Tensor) -> torch.Tensor:
    """The paper's loss: ||C_S - C_T||_F^2 / (4 d^2), C_S from the batch's features."""
    d = source.shape[1]
    return ((covariance(source) - target_cov) ** 2).sum() / (4 * d * d)


def feature_stats(features: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"n": torch.tensor(float(len(features))), "mean": features.mean(0),
            "cov": covariance(features)}


def pool(stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Statistics of the union of the sites' features, from each site's n, mean, covariance:
    scatter = sum_i (n_i - 1) C_i + n_i (m_i - m)(m_i - m)^T, C = scatter / (N - 1)."""
    stats = [s for s in stats if float(s["n"]) > 0]
    n = sum(float(s["n"]) for s in stats)
    mean = sum(float(s["n"]) * s["mean"].double() for s in stats) / n
    scatter = sum((float(s["n"]) - 1) * s["cov"].double()
                  + float(s["n"]) * torch.outer(s["mean"].double() - mean, s["mean"].double() - mean)
                  for s in stats)
    return {"n": torch.tensor(n), "mean": mean.float(), "cov": (scatter / max(n - 1, 1)).float()}


class CoralHook(Hook):
    """Adds lambda * CORAL(batch features, the federation's covariance) to the loss."""

    def __init__(self, weight: float, target_cov: torch.Tensor):
        self.weight, self.target_cov = weight, target_cov
        self.total, self.steps = torch.zeros(()), 0

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor | None:
        if ctx.features is None or len(ctx.features) < 2:
            return None
        loss = coral_loss(ctx.features.flatten(1), self.target_cov.to(ctx.features.device))
        self.total, self.steps = self.total + loss.detach().cpu(), self.steps + 1
        return self.weight * loss

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        """The mean unweighted CORAL loss (compare with train_loss to choose coral.lambda)."""
        return {"coral_loss": float(self.total) / max(self.steps, 1)}


def client_hooks(cfg: dict, inbox: dict) -> list[Hook]:
    if not cfg["coral"]["enabled"] or STATS_RECORD not in inbox:
        return []
    return [CoralHook(cfg["coral"]["lambda"], inbox[STATS_RECORD]["cov"])]


@torch.no_grad()
def site_feature_stats(model, x: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """A site's feature statistics under `model` (eval mode), from its unlabelled images."""
    model.eval()
    feats = torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return feature_stats(feats.flatten(1).double().cpu())


class CoralServer(Extension):
    """The server's half: asks the statistics sites, pools, forwards."""

    def __init__(self, cfg: dict):
        self.cfg, self.targets = cfg, set(cfg["domain"]["targets"])
        self.stats: dict[str, torch.Tensor] | None = None

    def before_train(self, rnd: int, arrays: ArrayRecord, grid, payload: ConfigRecord) -> None:
        wanted = self.targets if self.cfg["coral"]["mode"] == "target" else set(range(self.cfg["num_clients"]))
        nodes = [n for n, s in grid.site_of_node.items() if s in wanted]
        content = {"arrays": arrays, "config": ConfigRecord({**payload, REQUEST: 1})}
        messages = [Message(RecordDict(content), dst_node_id=n, message_type="query") for n in nodes]
        replies = [m for m in grid.send_and_receive(messages) if not m.has_error()]
        if len(replies) < len(nodes):
            raise RuntimeError(f"CORAL: {len(nodes) - len(replies)} of {len(nodes)} statistics sites "
                               "did not answer")
        self.stats = pool([m.content[STATS_RECORD].to_torch_state_dict() for m in replies])

    def outgoing(self, messages: list) -> list:
        if self.stats is not None:
            for m in messages:
                m.content[STATS_RECORD] = ArrayRecord({"mean": self.stats["mean"], "cov": self.stats["cov"]})
        return messages

    def summary(self) -> dict:
        c = self.cfg["coral"]
        return {"coral": {"lambda": c["lambda"], "mode": c["mode"],
                          "statistics_from": sorted(self.targets) if c["mode"] == "target" else "all sites"}}
