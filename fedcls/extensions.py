"""Server-side features that ride along the round loop (continual learning, CORAL, ...).

The loop (fedcls.federation) calls each extension at fixed points of every round; the base
class does nothing, so an extension overrides only what it needs:

    active_sites(rnd)        sites that may be sampled this round (None: all)
    outgoing(messages)       before the train messages go out (add named records)
    incoming(replies)        before the strategy aggregates (take named records out)
    after_round(rnd, arrays) -> extra per-round metrics for metrics.jsonl
    summary()                -> extra keys for summary.json
"""

from __future__ import annotations


class Extension:
    def active_sites(self, rnd: int) -> set[int] | None:
        return None

    def outgoing(self, messages: list) -> list:
        return messages

    def incoming(self, replies: list) -> list:
        return replies

    def after_round(self, rnd: int, arrays) -> dict:
        return {}

    def summary(self) -> dict:
        return {}


def extensions_for(cfg: dict) -> list[Extension]:
    from fedcls import continual

    out: list[Extension] = []
    if continual.enabled(cfg):
        from fedcls.continual.server import ContinualServer

        out.append(ContinualServer(cfg))
    return out
