"""Pre-aggregation inside a cohort actor (``backend.pre_aggregate=true``), for strategies whose
aggregation is an example-weighted mean of the clients' weights (they declare it:
``Capabilities(weighted_mean=True)``, e.g. FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad).

The actor averages its cohort's weights itself; the first client's reply carries that mean with
the cohort's example count and the cohort's example-weighted metrics, the others carry their own
site and participation with weight 0 and refer to the same ArrayRecord, so one set of weights per
cohort crosses to the driver. The strategy's weighted mean of these replies is the weighted mean
over all clients (up to float rounding), and every client is still counted as trained.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

OWN = ("site", "participations")  # metrics that stay each client's own


def pre_aggregate(replies: list[Message], requests: list[Message]) -> list[Message]:
    """The cohort's replies with their weights averaged into the first (see module docstring)."""
    usable = [(r, q) for r, q in zip(replies, requests) if not r.has_error()]
    counts = [float(r.content["metrics"]["num-examples"]) for r, _ in usable]
    total = sum(counts)
    if len(usable) < 2 or total <= 0:
        return replies
    states = [r.content["arrays"].to_torch_state_dict() for r, _ in usable]
    mean = {k: (sum(n * s[k].double() for n, s in zip(counts, states)) / total).to(v.dtype)
            if v.is_floating_point() else v for k, v in states[0].items()}
    shared = ArrayRecord(mean)
    metrics = [dict(r.content["metrics"]) for r, _ in usable]
    cohort = {k: sum(n * float(m[k]) for n, m in zip(counts, metrics)) / total
              for k in metrics[0] if k not in (*OWN, "num-examples")}
    out = {id(usable[0][0]): _reply(usable[0][1], shared, {**metrics[0], **cohort, "num-examples": total})}
    for (reply, request), own in zip(usable[1:], metrics[1:]):
        out[id(reply)] = _reply(request, shared, {**own, "num-examples": 0.0})
    return [out.get(id(r), r) for r in replies]


def _reply(request: Message, arrays: ArrayRecord, metrics: dict) -> Message:
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=request)


def eligible(strategy: str) -> bool:
    import strategies

    return strategies.capabilities(strategy).weighted_mean

