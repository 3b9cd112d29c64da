"""Federated Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
Adaptation", ECCV-W 2016): source and target sites align the second-order statistics of their
penultimate features, sharing covariance statistics, never images or target labels.

Deep CORAL trains ONE network on both domains, loss = CE(source) + lambda CORAL(C_S, C_T), with
gradients through both covariances. Two lessons from the first federated version (sources only,
toward a forwarded target covariance): the target side must move too (centrally, aligning to a
fixed target covariance gained nothing, the two-sided loss ~10-12 points), and the paper's loss
||C_S - C_T||_F^2 / (4 d^2) was met by shrinking the features (loss 2e-4, covariances still 70%
apart, source trace 500 -> 12). Hence:
  * the targets train too (``coral.train_targets``): with no labels, on the CORAL loss alone
    (``unsupervised_update``; their labels are removed first), toward the sources' pooled
    covariance while the sources align to the targets' (each the round's global model's);
  * ``coral.loss=cosine``: L = 1 - <C_S, C_T>_F / (||C_S||_F ||C_T||_F) in [0, 1],
    0 iff C_S is a positive multiple of C_T. Scaling either side leaves it unchanged, so
    shrinking cannot meet it, and the other side's fixed (round-old) covariance cannot pin a
    side's scale (a size-relative ||C_S - C_T||^2 / (||C_S||^2 + ||C_T||^2) did: against a fresh
    model's tiny features it held the sources tiny and nothing learned). ``paper``: the original.
  * ``coral.target_update=added`` (default): a target's update (features only: CORAL gives the
    head no gradient) is added to the sources' mean rather than averaged in by image count,
    as Deep CORAL sums both sides' gradients (``added_target_weights``); ``averaged``: FedAvg's.
Measured (README "Sites that differ in domain"): ``loss=paper`` (default), targets training, added:
digits_shift seed 0 target accuracy 35.8 -> 61.5 (fedavg); ``cosine`` hurt on digits_shift_framed.
(Flower's FedAvg gives every message ONE shared RecordDict: each site's statistics go in a copy,
``outgoing``; writing into the shared one sent every site the last site's side.)

Protocol, every round (``coral.enabled=true``): the server sends the global weights to the
statistics sites (every site; ``train_targets=false``: the targets only), which reply with
count, mean and covariance of their training features; it pools them per side (``pool``) and
sends each training site the other side's pooled covariance (``mode=pooled``: everyone's) with
its train message (record ``coral.stats``). Shared per site and round: n, a d-vector mean and a
d x d covariance (d = 84 for simple_cnn). Written by hand: Flower and Avalanche have no CORAL.
"""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.algorithms.training import Hook, LocalResult, TrainContext, TrainParams, local_update
from fedcls.schema import Config

STATS_RECORD = "coral.stats"  # train-message record: the other side's pooled mean and covariance
REQUEST = "coral-request"      # query-message config entry asking a site for its statistics
LOSSES = ("cosine", "paper")


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d x d) of the rows of x (n x d)."""
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(len(x) - 1, 1)


def coral_loss(source: torch.Tensor, target_cov: torch.Tensor) -> torch.Tensor:
    """The paper's loss: ||C_S - C_T||_F^2 / (4 d^2), C_S from the batch's features."""
    d = source.shape[1]
    return ((covariance(source) - target_cov) ** 2).sum() / (4 * d * d)


def cosine_coral_loss(source: torch.Tensor, target_cov: torch.Tensor) -> torch.Tensor:
    """1 - cos(C_S, C_T) in the Frobenius inner product, C_S from the batch's features: the
    covariances' shapes aligned, whatever their sizes (so shrinking cannot meet it)."""
    cov = covariance(source)
    norms = torch.linalg.norm(cov) * torch.linalg.norm(target_cov)
    return 1 - (cov * target_cov).sum() / norms.clamp_min(1e-12)


def loss_fn(name: str):
    return cosine_coral_loss if name == "cosine" else coral_loss


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
    """Adds lambda * CORAL(batch features, the other side's covariance) to the loss."""

    def __init__(self, weight: float, target_cov: torch.Tensor, loss: str = "paper"):
        self.weight, self.target_cov, self.loss = weight, target_cov, loss_fn(loss)
        self.total, self.steps = torch.zeros(()), 0

    def extra_loss(self, ctx: TrainContext) -> torch.Tensor | None:
        if ctx.features is None or len(ctx.features) < 2:
            return None
        loss = self.loss(ctx.features.flatten(1), self.target_cov.to(ctx.features.device))
        self.total, self.steps = self.total + loss.detach().cpu(), self.steps + 1
        return self.weight * loss

    def after_training(self, ctx: TrainContext) -> dict[str, float]:
        """The mean unweighted CORAL loss (compare with train_loss to choose coral.lambda)."""
        return {"coral_loss": float(self.total) / max(self.steps, 1)}


def client_hooks(cfg: Config, inbox: dict) -> list[Hook]:
    if not cfg.coral.enabled or STATS_RECORD not in inbox:
        return []
    return [CoralHook(cfg.coral.lambda_, inbox[STATS_RECORD]["cov"], cfg.coral.loss)]


def trains_unsupervised(cfg: Config, site: int) -> bool:
    """Whether `site` is a target that trains on CORAL alone (its labels never used)."""
    return site in cfg.domain.targets


def without_labels(data):
    """A target site's data with every label replaced by 0 (never read: the loss ignores them)
    and its test images removed."""
    return dataclasses.replace(data, train_y=torch.zeros_like(data.train_y), test_x=data.test_x[:0],
                               test_y=data.test_y[:0])


def no_supervised_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target's stand-in for the cross-entropy: zero (kept in the graph so that a batch with
    no CORAL term, a last batch of one image, still backpropagates)."""
    return (logits * 0).sum()


class FreezeSharedBatchNorm(Hook):
    """A target trains under the federation's BatchNorm statistics (see freeze_shared_batchnorm)."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = hooks

    def before_training(self, ctx: TrainContext) -> None:
        freeze_shared_batchnorm(ctx.model, self.hooks)


def unsupervised_update(model, data, params: TrainParams, hooks: list[Hook], state: dict) -> LocalResult:
    """A target site's round: the one loop (``training.local_update``) on its unlabelled images,
    with the hooks' losses alone (CORAL's, and e.g. FedBN's local BatchNorm) and no cross-entropy."""
    if not any(isinstance(h, CoralHook) for h in hooks):
        raise RuntimeError("a target site was asked to train without CORAL statistics: targets train "
                           "only with coral.enabled=true (their labels are never trained on)")
    unsupervised = dataclasses.replace(params, loss_fn=no_supervised_loss)
    result = local_update(model, without_labels(data), unsupervised, [*hooks, FreezeSharedBatchNorm(hooks)], state)
    result.metrics.pop("train_loss")  # zero by construction: it would pull the sources' mean down
    return result


def freeze_shared_batchnorm(model, hooks: list[Hook]) -> None:
    """BatchNorm that the federation shares (not kept local, as FedBN keeps it) normalises the
    target's features at evaluation with the global running statistics, mostly the sources':
    the target trains under those (eval mode), so the features it aligns are the ones it is
    evaluated with (in train mode it would align features normalised by its own batches)."""
    local = set().union(*(h.local_keys(model) for h in hooks))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" not in local:
            module.eval()


@torch.no_grad()
def site_feature_stats(model, x: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """A site's feature statistics under `model` (eval mode), from its unlabelled images."""
    model.eval()
    feats = torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return feature_stats(feats.flatten(1).double().cpu())


def alignment(source: dict, target: dict) -> dict[str, float]:
    """Diagnostics: ||C_S - C_T||_F / ||C_T||_F and both traces (shrinking shows as a falling
    source trace with a distance that stays)."""
    cs, ct = source["cov"].double(), target["cov"].double()
    return {"coral_distance": float(torch.linalg.norm(cs - ct) / torch.linalg.norm(ct).clamp_min(1e-12)),
            "coral_trace_sources": float(cs.trace()), "coral_trace_targets": float(ct.trace())}


def _examples(m) -> float:
    return float(next(iter(m.content.metric_records.values()))["num-examples"])


def added_target_weights(sources: list, targets: list, start: dict) -> None:
    """Deep CORAL takes one step on CE(source) + lambda CORAL(both): the target's gradient adds
    to the sources', it is not averaged with them. FedAvg's mean over n_s sources' and n_t
    targets' images would shrink the targets' CORAL update to n_t/N and the sources' to n_s/N.
    Each target reply's float weights become  mean_S + (N / N_T) (w_t - w_0)  (mean_S: the
    sources' examples-weighted mean, w_0 the round's global weights), so that the strategy's
    examples-weighted mean is  mean_S + sum_t (n_t / N_T) (w_t - w_0)."""
    n_s, n_t = sum(map(_examples, sources)), sum(map(_examples, targets))
    weights = [m.content["arrays"].to_torch_state_dict() for m in sources]
    for m in targets:
        mine, new = m.content["arrays"].to_torch_state_dict(), {}
        for key, value in mine.items():
            if not value.is_floating_point():
                new[key] = value
                continue
            mean = sum(_examples(r) * w[key].double() for r, w in zip(sources, weights)) / n_s
            step = (value.double() - start[key].double()) * (n_s + n_t) / n_t
            new[key] = (mean + step).to(value.dtype)
        m.content["arrays"] = ArrayRecord(new)


class CoralServer(Extension):
    """The server's half: asks the statistics sites, pools each side, forwards the other side's."""

    def __init__(self, cfg: Config):
        self.cfg, self.targets = cfg, set(cfg.domain.targets)
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        self.site_of_node: dict[int, int] = {}
        self.global_weights: dict[str, torch.Tensor] = {}

    def _wanted(self) -> set[int]:
        c = self.cfg.coral
        if c.mode == "target" and not c.train_targets:
            return self.targets
        return set(range(self.cfg.num_clients))

    def before_train(self, rnd: int, arrays: ArrayRecord, grid, payload: ConfigRecord) -> None:
        self.site_of_node = dict(grid.site_of_node)
        self.global_weights = arrays.to_torch_state_dict()
        nodes = [n for n, s in grid.site_of_node.items() if s in self._wanted()]
        content = {"arrays": arrays, "config": ConfigRecord({**payload, REQUEST: 1})}
        messages = [Message(RecordDict(content), dst_node_id=n, message_type="query") for n in nodes]
        replies = [m for m in grid.send_and_receive(messages) if not m.has_error()]
        if len(replies) < len(nodes):
            raise RuntimeError(f"CORAL: {len(nodes) - len(replies)} of {len(nodes)} statistics sites "
                               "did not answer")
        by_site = {self.site_of_node[m.metadata.src_node_id]: m.content[STATS_RECORD].to_torch_state_dict()
                   for m in replies}
        sides = {"all": list(by_site), "targets": [s for s in by_site if s in self.targets],
                 "sources": [s for s in by_site if s not in self.targets]}
        self.stats = {k: pool([by_site[s] for s in sites]) for k, sites in sides.items() if sites}

    def _for_site(self, site: int) -> dict[str, torch.Tensor] | None:
        if self.cfg.coral.mode == "pooled":
            return self.stats.get("all")
        return self.stats.get("sources" if site in self.targets else "targets")

    def outgoing(self, messages: list) -> list:
        for m in messages:
            stats = self._for_site(self.site_of_node.get(m.metadata.dst_node_id, -1))
            if stats is not None:  # Flower's messages share one RecordDict: each its own copy
                record = ArrayRecord({"mean": stats["mean"], "cov": stats["cov"]})
                m.content = RecordDict({**dict(m.content.items()), STATS_RECORD: record})
        return messages

    def incoming(self, replies: list) -> list:
        """Targets have no train_loss: give them the sources' (examples-weighted), so the
        federation's weighted train_loss stays the sources' own. With ``target_update=added``,
        rewrite each target's weights so that the strategy's examples-weighted mean becomes the
        sources' mean plus the targets' mean update (``added_target_weights``)."""
        sides = {"sources": [], "targets": []}
        for m in (m for m in replies if not m.has_error()):
            site = self.site_of_node.get(m.metadata.src_node_id, -1)
            sides["targets" if site in self.targets else "sources"].append(m)
        sources = [next(iter(m.content.metric_records.values())) for m in sides["sources"]]
        n = sum(float(r["num-examples"]) for r in sources)
        if n > 0:
            loss = sum(float(r.get("train_loss", 0.0)) * float(r["num-examples"]) for r in sources) / n
            for m in sides["targets"]:
                next(iter(m.content.metric_records.values())).setdefault("train_loss", loss)
        if self.cfg.coral.target_update == "added" and sides["sources"] and sides["targets"]:
            added_target_weights(sides["sources"], sides["targets"], self.global_weights)
        return replies

    def after_round(self, rnd: int, arrays) -> dict:
        """The round's alignment at its start (the statistics the sites trained against)."""
        if "sources" in self.stats and "targets" in self.stats:
            return alignment(self.stats["sources"], self.stats["targets"])
        return {}

    def summary(self) -> dict:
        c = self.cfg.coral
        return {"coral": {"lambda": c.lambda_, "mode": c.mode, "loss": c.loss,
                          "train_targets": c.train_targets,
                          "statistics_from": "all sites" if self._wanted() != self.targets else sorted(self.targets)}}


def asks_for_statistics(msg) -> bool:
    """A query message asking a site for its feature statistics (sent by CORAL's and
    recolouring's server halves)."""
    return "config" in msg.content.config_records and REQUEST in msg.content["config"]


class AnswersStatistics(ClientHalf):
    """Client half that answers the statistics query: the mean and covariance of the site's
    unlabelled training features under the weights sent."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def answers(self, msg) -> bool:
        return asks_for_statistics(msg)

    def answer(self, model, x: torch.Tensor) -> RecordDict:
        return RecordDict({STATS_RECORD: ArrayRecord(site_feature_stats(model, x))})


class CoralClient(AnswersStatistics):
    """CORAL's client half: the CORAL loss after the strategy's hooks (once statistics came), and
    a target site trains on it alone (its labels never used)."""

    def hooks_last(self, job, inbox: dict) -> list[Hook]:
        return client_hooks(self.cfg, inbox)

    def local_update(self, job):
        return unsupervised_update if trains_unsupervised(self.cfg, job.site) else None


FEATURE = Feature("coral", lambda cfg: bool(cfg.coral.enabled), server=lambda cfg, data: CoralServer(cfg),
                  client=CoralClient)
