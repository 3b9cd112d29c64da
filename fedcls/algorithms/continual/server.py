"""The server's side of continual runs, plugged into the round loop (fedcls.apps.federation):

- which sites take part in a round (late joiners wait for ``join_round``);
- the global model's accuracy on each experience's global test set after every round, the
  accuracy matrix (a row when every site has finished an experience) and the metrics of
  fedcls.algorithms.continual.metrics, per round in metrics.jsonl and at the end in summary.json;
- ``aggregate_importances``: the sites' EWC importances of each finished experience,
  averaged weighted by examples, sent back with every later train message;
- EWC's stability: the sites report how close the penalty came to its bound (fedcls.algorithms.continual.ewc);
  the first round in which it reaches the bound raises one EWCStabilityWarning.
"""

from __future__ import annotations

import warnings

import torch
from flwr.app import ArrayRecord, Message

from fedcls.algorithms.continual import schedule
from fedcls.algorithms.continual.ewc import (
    CAPPED,
    EXAMPLES,
    FEDERATED,
    IMPORTANCE,
    RATIO,
    EWCStabilityWarning,
    stability_warning,
)
from fedcls.algorithms.continual.metrics import continual_metrics
from fedcls.algorithms.continual.streams import class_groups, global_test_sets
from fedcls.algorithms.feature import Extension
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import evaluate
from fedcls.data.federated import FederatedData
from fedcls.schema import Config


class ImportanceAverage:
    """Running example-weighted mean of the sites' importances, per experience."""

    def __init__(self):
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        self.counts: dict[int, float] = {}

    def add(self, exp: int, tensors: dict[str, torch.Tensor]) -> None:
        n = float(tensors[EXAMPLES])
        acc = self.sums.setdefault(exp, {})
        for k, v in tensors.items():
            if k != EXAMPLES:
                acc[k] = acc.get(k, 0) + n * v.double()
        self.counts[exp] = self.counts.get(exp, 0.0) + n

    def means(self) -> dict[int, dict[str, torch.Tensor]]:
        return {e: {k: (v / self.counts[e]).float() for k, v in s.items()}
                for e, s in self.sums.items() if self.counts[e] > 0}


class ContinualServer(Extension):
    def __init__(self, cfg: Config, data: FederatedData):
        self.cfg, self.num_classes = cfg, data.dataset.num_classes
        self.tests = global_test_sets(cfg, data)
        self.model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes)
        self.ends = schedule.experience_end_rounds(cfg)
        self.rows: list[list[float]] = []
        self.importances = ImportanceAverage()
        self.latest: dict = {}
        self.ewc = {"ewc_stability_max": 0.0, "ewc_capped_max": 0.0}  # over sites and rounds

    def train_sites(self, rnd: int) -> set[int]:
        return schedule.active_sites(self.cfg, rnd)

    def outgoing(self, messages: list[Message]) -> list[Message]:
        """Add the federation's importances to the round's train messages."""
        for exp, tensors in self.importances.means().items():
            for m in messages:
                m.content[f"{FEDERATED}{exp}"] = ArrayRecord(tensors)
        return messages

    def incoming(self, replies: list[Message]) -> list[Message]:
        """Take the sites' importances out of the replies (strategies expect weights + metrics)."""
        for m in (m for m in replies if not m.has_error()):
            for name in [n for n in m.content.array_records if n.startswith(IMPORTANCE)]:
                self.importances.add(int(name[len(IMPORTANCE):]), m.content[name].to_torch_state_dict())
                del m.content[name]
        self._check_ewc(replies)
        return replies

    def _check_ewc(self, replies: list[Message]) -> None:
        """Track EWC's stability ratio; warn once, the first time a site reaches the bound."""
        metrics = [next(iter(m.content.metric_records.values())) for m in replies if not m.has_error()]
        reached = [(float(r[RATIO]), float(r[CAPPED]), int(r.get("site", -1))) for r in metrics
                   if RATIO in r and float(r[RATIO]) >= 1]
        if reached and self.ewc["ewc_stability_max"] < 1:
            ratio, capped = max(r[0] for r in reached), max(r[1] for r in reached)
            warnings.warn(stability_warning(self.cfg, ratio, capped, sorted(r[2] for r in reached)),
                          EWCStabilityWarning, stacklevel=2)
        for r in metrics:
            for key, name in (("ewc_stability_max", RATIO), ("ewc_capped_max", CAPPED)):
                self.ewc[key] = max(self.ewc[key], float(r.get(name, 0.0)))

    def after_round(self, rnd: int, arrays: ArrayRecord) -> dict:
        """Per-experience accuracies of the new global model and the metrics so far."""
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        accs = [evaluate(self.model, x, y)[1] for x, y in self.tests]
        self.rows += [accs] * sum(1 for end in self.ends[len(self.rows):] if end == rnd)
        matrix = self.rows if self.rows and self.ends[len(self.rows) - 1] == rnd else self.rows + [accs]
        self.latest = continual_metrics(matrix, [len(y) for _, y in self.tests])
        extra = ({"federated_importances": sorted(self.importances.counts)}
                 if self.cfg.continual.aggregate_importances else {})
        return {"experience": schedule.federation_experience(self.cfg, rnd),
                "experience_accuracy": accs, **self.latest, **extra}

    def summary(self) -> dict:
        c = self.cfg.continual
        info = {"continual": {
            "kind": c.kind, "method": c.method, "experiences": c.experiences,
            "experience_end_rounds": self.ends,
            "classes": (class_groups(self.cfg, self.num_classes)
                        if c.kind == "class_incremental" else None),
            "domains": c.domains if c.kind == "domain_incremental" else None}}
        ewc = self.ewc if "ewc" in c.method else {}
        return {**self.latest, **info, **ewc}
