"""Closed-form CORAL at the penultimate layer (``coral.align=recolour``): Sun, Feng & Saenko,
"Return of Frustratingly Easy Domain Adaptation", AAAI 2016, which whitens one domain's features
with its own covariance and re-colours them with the other's, in closed form (no training).

Here the target's features are re-coloured to the sources' statistics before the shared head,

    f -> A (f - mu_T) + mu_S,   A = (C_S + eps I)^1/2 (C_T + eps I)^-1/2,

so that the mapped target features have mean mu_S and A (C_T + eps I) A^T = C_S + eps I (with
eps = 0 and C_T of full rank: exactly C_S). eps regularises both sides as the paper does (its
"+ eye"), so A = I when the statistics are equal; since feature scales differ between models and
training runs, eps is relative: ``coral.recolour_eps`` (default 1, the paper's "+ I" in units of
the features' scale) x the mean per-dimension variance of the two sides, (tr C_S + tr C_T) / 2d.
ReLU features have dead dimensions (C_T singular); eps keeps the inverse root finite. Measured
(digits_shift(_framed), seeds 0-1, benchmarks/coral_reference.py and in-process federations):
eps 1 >= 0.1 > 0.01 in target accuracy, by 0-2 points.

Federated: nothing trains. Before each evaluation the server asks the source sites for n, mean
and covariance of their training features under the weights being evaluated (fedcls.algorithms.coral's
statistics query; FedBN sites use their own BatchNorm), pools them and sends them with the
target sites' evaluate messages (record ``coral.recolour``). A target site computes its own
statistics from its unlabelled training images (after FedBN's AdaBN, when composed) and folds
the map into the head in place, W -> W A, c -> c + W (mu_S - A mu_T); the next message
reloads the global head. Composes with the Deep CORAL training loss (coral.enabled).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcls.algorithms.coral import REQUEST, STATS_RECORD, AnswersStatistics, pool, site_feature_stats
from fedcls.algorithms.feature import Extension, Feature
from fedcls.algorithms.training import Hook
from fedcls.schema import Config

RECORD = "coral.recolour"  # evaluate-message record: the sources' pooled mean and covariance
ALIGNS = ("none", "recolour")


def psd_power(c: torch.Tensor, p: float) -> torch.Tensor:
    """C^p of a symmetric positive semi-definite C (eigenvalues floored at 1e-12)."""
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag(vals.clamp_min(1e-12) ** p) @ vecs.T


def recolouring(source: dict, target: dict, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b) with f -> A f + b re-colouring target features to the source statistics (float64)."""
    cs, ct = source["cov"].double(), target["cov"].double()
    d = len(cs)
    reg = eps * float(cs.trace() + ct.trace()) / (2 * d) * torch.eye(d, dtype=torch.float64)
    a = psd_power(cs + reg, 0.5) @ psd_power(ct + reg, -0.5)
    return a, source["mean"].double() - a @ target["mean"].double()


@torch.no_grad()
def fold_into_head(head: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor) -> None:
    """head(A f + b) as one linear layer: W -> W A, c -> c + W b (in place)."""
    w = head.weight.double()
    head.bias.copy_((head.bias.double() + w @ b).to(head.bias.dtype))
    head.weight.copy_((w @ a).to(head.weight.dtype))


class Recolour(Hook):
    """A target site's evaluation: its features re-coloured to the sources' statistics."""

    def __init__(self, source: dict, eps: float):
        self.source, self.eps = source, eps

    def before_evaluate(self, model, state: dict, unlabelled=None) -> None:
        if unlabelled is None or len(unlabelled) < 2:
            return
        a, b = recolouring(self.source, site_feature_stats(model, unlabelled), self.eps)
        fold_into_head(model.head, a, b)


def evaluation_hooks(cfg: Config, inbox: dict) -> list[Hook]:
    """After the strategy's evaluation hooks (FedBN's AdaBN first), when statistics came."""
    if cfg.coral.align != "recolour" or RECORD not in inbox:
        return []
    return [Recolour(inbox[RECORD], cfg.coral.recolour_eps)]


class RecolourServer(Extension):
    """The server's half: the sources' pooled statistics under the evaluated weights, to the targets."""

    TRANSIENT = ("grid", "payload")  # the round's, not state: a checkpoint leaves them out

    def __init__(self, cfg: Config):
        self.cfg, self.targets = cfg, set(cfg.domain.targets)
        self.grid = self.payload = None

    def before_train(self, rnd: int, arrays: ArrayRecord, grid, payload: ConfigRecord) -> None:
        self.grid, self.payload = grid, payload  # the round's, for its evaluation's queries

    def outgoing_evaluate(self, rnd: int, arrays: ArrayRecord, messages: list) -> list:
        site_of = dict(self.grid.site_of_node)
        to_targets = [m for m in messages if site_of.get(m.metadata.dst_node_id) in self.targets]
        if not to_targets:
            return messages
        nodes = [n for n, s in site_of.items() if s not in self.targets]
        content = {"arrays": arrays, "config": ConfigRecord({**self.payload, REQUEST: 1})}
        queries = [Message(RecordDict(content), dst_node_id=n, message_type="query") for n in nodes]
        replies = [m for m in self.grid.send_and_receive(queries) if not m.has_error()]
        if not replies:
            raise RuntimeError("coral.align=recolour: no source site sent its feature statistics")
        source = pool([m.content[STATS_RECORD].to_torch_state_dict() for m in replies])
        for m in to_targets:  # Flower's messages share one RecordDict: give the targets' their own
            m.content = RecordDict({**dict(m.content.items()), RECORD: ArrayRecord(
                {"mean": source["mean"], "cov": source["cov"]})})
        return messages


class RecolourClient(AnswersStatistics):
    """The client half: a target evaluates with its features re-coloured (after the strategy's
    evaluation hooks, FedBN's AdaBN first); every site answers the statistics query."""

    def evaluation_hooks(self, inbox: dict) -> list[Hook]:
        return evaluation_hooks(self.cfg, inbox)


FEATURE = Feature("coral_align", lambda cfg: cfg.coral.align == "recolour", server=lambda cfg, data: RecolourServer(cfg),
                  client=RecolourClient)
