"""Reply validation at the server: what a site sends back is checked before any strategy sees it,
in simulation and deployment alike (issue 16). A reply is rejected, naming the site and the reason,
when

- its weights are not the global model's: an unexpected or missing array (a strategy that keeps
  layers at the sites, FedBN, may leave out its BatchNorm), another shape or dtype, a non-finite value;
- another named record (SCAFFOLD's control-variate change, EWC's importances) holds an array
  under a model key with another shape or dtype, or a non-scalar under any other key;
- its ``num-examples`` is not a whole number in [0, the training samples the site declared when
  the run started (the roll call), plus the replay memory in a continual run] (the weight every
  FedAvg-style mean gives it: one site claiming 10**12 examples would otherwise own the average);
  ``screening.max_examples`` caps what a site may declare;
- a metric it reports is not a finite number, or its ``site`` metric names another site;
- with ``screening.norm_ratio`` > 0: its update (weights - global weights) is longer than that many
  times the round's median update (over three or more replies that trained on data).

The run goes on with the others; fewer usable replies than ``faults.min_train_nodes`` stop it.
Hand-written: Flower's strategies aggregate whatever arrives, and its Byzantine-robust strategies
(Krum, Bulyan, ...) change the aggregate instead of refusing malformed replies.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message

from fedcls.data.federated import FederatedData
from fedcls.schema import Config


@dataclass
class Screened:
    """A round's training replies after screening."""

    usable: list[Message]
    failed: dict[str, list[int]]  # reason kind -> sites (late, crashed, non_finite, rejected)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (site, why) of each rejected reply


class ReplyScreen:
    """Checks each round's training replies against the global weights sent and the sites' data."""

    def __init__(self, cfg: Config, data: FederatedData, initial: ArrayRecord, site_local_keys: set[str],
                 declared: dict[int, int] | None = None):
        """`initial`: the model's weights as the run starts (their keys, shapes and dtypes are what a
        site's model sends back: an aggregate may change a dtype, Flower's mean of integer counters);
        `declared`: each site's training samples as it declared them at the roll call (None: the
        server's own partition of the data)."""
        self.cfg, self.site_local_keys = cfg, set(site_local_keys)
        self.expected = {k: (tuple(a.shape), a.dtype) for k, a in initial.items()}
        self.max_examples = example_bounds(cfg, data, declared)

    def screen(self, sent: list[Message], replies: list[Message], site_of_node: dict[int, int],
               arrays: ArrayRecord) -> Screened:
        answered = {m.metadata.src_node_id for m in replies}
        late = sorted(site_of_node.get(m.metadata.dst_node_id, -1) for m in sent
                      if m.metadata.dst_node_id not in answered)
        crashed = sorted(site_of_node.get(m.metadata.src_node_id, -1) for m in replies if m.has_error())
        verdicts = []
        for m in (m for m in replies if not m.has_error()):
            site = site_of_node.get(m.metadata.src_node_id, -1)
            verdicts.append((m, site, self.why_invalid(m, site)))
        self._screen_norms(verdicts, arrays)
        non_finite = sorted(s for _, s, why in verdicts if why == NON_FINITE)
        rejected = [(s, why) for _, s, why in verdicts if why and why != NON_FINITE]
        bad = {id(m) for m, _, why in verdicts if why}
        usable = [m for m in replies if id(m) not in bad]
        failed = {"late": late, "crashed": crashed, "non_finite": non_finite,
                  "rejected": sorted(s for s, _ in rejected)}
        return Screened(usable, failed, sorted(rejected))

    def why_invalid(self, msg: Message, site: int) -> str | None:
        """Why `msg` (site `site`'s training reply) cannot be aggregated, or None."""
        expected = self.expected
        if "arrays" not in msg.content.array_records or "metrics" not in msg.content.metric_records:
            return "the reply carries no weights or no metrics"
        weights = msg.content["arrays"]
        if extra := sorted(set(weights.keys()) - set(expected)):
            return f"unexpected arrays {extra[:3]}"
        if missing := sorted(set(expected) - set(weights.keys()) - self.site_local_keys):
            return f"missing arrays {missing[:3]}"
        for key, array in weights.items():
            shape, dtype = expected[key]
            if tuple(array.shape) != shape or array.dtype != dtype:
                return f"array '{key}' is {array.dtype}{list(array.shape)}, the model's is {dtype}{list(shape)}"
        if why := self._why_bad_records(msg):
            return why
        if not _finite(msg):
            return NON_FINITE
        return self._why_bad_metrics(msg.content["metrics"], site)

    def _why_bad_records(self, msg: Message) -> str | None:
        """Named records besides the weights: model keys as the model has them, others scalars."""
        for name, record in msg.content.array_records.items():
            for key, array in record.items() if name != "arrays" else ():
                shape, dtype = self.expected.get(key, ((), None))
                if tuple(array.shape) != shape and not (dtype is None and math.prod(array.shape) == 1):
                    return f"record '{name}' holds '{key}' as {list(array.shape)}, expected {list(shape)}"
                if dtype is not None and array.dtype != dtype:
                    return f"record '{name}' holds '{key}' as {array.dtype}, the model's is {dtype}"
        return None

    def _why_bad_metrics(self, metrics, site: int) -> str | None:
        for key, value in metrics.items():
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                return f"metric '{key}' is not a finite number ({str(value)[:40]})"
        if "site" in metrics and metrics["site"] != site:
            return f"it claims to be site {metrics['site']:g}, but its node serves site {site}"
        n, bound = metrics.get("num-examples"), self.max_examples.get(site, 0)
        if n is None or n != int(n) or not 0 <= n <= bound:
            return (f"num-examples={n:g} is not a whole number in [0, {bound}] (the training samples the site "
                    f"declared; screening.max_examples caps them)" if n is not None else "no num-examples")
        return None

    def _screen_norms(self, verdicts: list, arrays: ArrayRecord) -> None:
        ratio = self.cfg.screening.norm_ratio
        valid = [i for i, (m, _, why) in enumerate(verdicts) if why is None and m.content["metrics"]["num-examples"] > 0]
        if ratio <= 0 or len(valid) < 3:  # sites without data this round (continual) sent the weights back
            return
        start = {k: a.numpy() for k, a in arrays.items()}
        norms = {i: _update_norm(verdicts[i][0].content["arrays"], start) for i in valid}
        limit = ratio * statistics.median(norms.values())
        for i, norm in norms.items() if limit > 0 else ():
            if norm > limit:
                m, site, _ = verdicts[i]
                verdicts[i] = (m, site, f"update norm {norm:.3g} is above {ratio:g} x the round's median "
                                        f"({limit / ratio:.3g}; screening.norm_ratio)")


NON_FINITE = "non-finite values"


def example_bounds(cfg: Config, data: FederatedData, declared: dict[int, int] | None) -> dict[int, int]:
    """The most num-examples each site's reply may claim: its declared (else partitioned) training
    samples, plus the replay memory (an experience and the memory train together), capped by
    screening.max_examples; with pre-aggregation, the whole cohort's (its first reply carries them)."""
    replay = cfg.continual.memory_size if cfg.continual.kind != "none" and "replay" in cfg.continual.method else 0
    counts = declared if declared is not None else {s: len(site.train_idx) for s, site in enumerate(data.sites)}
    cap = cfg.screening.max_examples or math.inf
    sizes = {s: int(min(n + replay, cap)) for s, n in counts.items()}
    if cfg.backend.pre_aggregate:
        sizes = dict.fromkeys(sizes, sum(sizes.values()))
    return sizes


def _finite(msg: Message) -> bool:
    for record in msg.content.array_records.values():
        for array in record.values():
            values = array.numpy()
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                return False
    return True


def _update_norm(weights: ArrayRecord, start: dict[str, np.ndarray]) -> float:
    total = 0.0
    for key, array in weights.items():
        values = array.numpy()
        if values.dtype.kind == "f":
            total += float(np.square(values.astype(np.float64) - start[key]).sum())
    return math.sqrt(total)
