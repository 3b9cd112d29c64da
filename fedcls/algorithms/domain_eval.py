"""Source and target sites (``domain.targets``): targets never train on their labels -- those are
for evaluation only; with CORAL (``coral.train_targets``) they train on its unsupervised loss
alone (fedcls.algorithms.coral); with ``coral.align=recolour`` their features are re-coloured to the sources'
statistics before the head at evaluation (fedcls.algorithms.coral_align) -- and every round records the
global model's accuracy at each site and, averaged over the target sites weighted by test
examples, ``target_accuracy`` (metrics.jsonl and summary.json, which also names the sources and
targets)."""

from __future__ import annotations

from fedcls.algorithms.feature import Extension, Feature
from fedcls.data.domains import site_domain
from fedcls.schema import Config


def _site_metrics(replies: list) -> dict[int, tuple[float, int]]:
    out = {}
    for m in (m for m in replies if not m.has_error()):
        metrics = next(iter(m.content.metric_records.values()))
        out[int(metrics["site"])] = (float(metrics["accuracy"]), int(metrics["num-examples"]))
    return out


class DomainEvaluation(Extension):
    def __init__(self, cfg: Config):
        self.cfg, self.targets = cfg, sorted(cfg.domain.targets)
        self.latest: dict = {}

    def train_sites(self, rnd: int) -> set[int] | None:
        if self.cfg.coral.enabled and self.cfg.coral.train_targets:
            return None  # targets train too, without labels (fedcls.algorithms.coral.unsupervised_update)
        return set(range(self.cfg.num_clients)) - set(self.targets)

    def after_evaluate(self, rnd: int, replies: list) -> dict:
        sites = _site_metrics(replies)
        targets = [sites[t] for t in self.targets if t in sites]
        n = sum(k for _, k in targets)
        self.latest = {
            "site_accuracy": {str(s): acc for s, (acc, _) in sorted(sites.items())},
            "target_accuracy": sum(a * k for a, k in targets) / n if n else None}
        return self.latest

    def summary(self) -> dict:
        d = self.cfg.domain
        return {**self.latest, "targets": self.targets,
                "sources": sorted(set(range(self.cfg.num_clients)) - set(self.targets)),
                "site_domains": [site_domain(self.cfg.domain, s) for s in range(self.cfg.num_clients)],
                "target_dataset": d.target_dataset}


FEATURE = Feature("domain_eval", lambda cfg: bool(cfg.domain.targets), server=lambda cfg, data: DomainEvaluation(cfg))
