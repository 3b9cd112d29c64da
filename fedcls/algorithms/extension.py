"""Server-side features that ride along the round loop (continual learning, CORAL, ...).

The loop (fedcls.apps.federation) calls each extension at fixed points of every round; the base
class does nothing, so an extension overrides only what it needs:

    train_sites(rnd)         sites that may be sampled for training this round (None: all)
    before_train(rnd, arrays, grid, config)  before the strategy configures training (CORAL
                             asks sites for feature statistics here)
    outgoing(messages)       before the train messages go out (add named records)
    incoming(replies)        before the strategy aggregates (take named records out)
    outgoing_evaluate(rnd, arrays, messages)  before the evaluate messages go out (CORAL's
                             closed-form alignment adds the sources' statistics)
    after_evaluate(rnd, replies) -> extra metrics from the sites' evaluation replies
    after_round(rnd, arrays) -> extra per-round metrics for metrics.jsonl
    summary()                -> extra keys for summary.json
"""

from __future__ import annotations


class Extension:
    def train_sites(self, rnd: int) -> set[int] | None:
        return None

    def before_train(self, rnd: int, arrays, grid, config) -> None:
        return None

    def outgoing(self, messages: list) -> list:
        return messages

    def incoming(self, replies: list) -> list:
        return replies

    def outgoing_evaluate(self, rnd: int, arrays, messages: list) -> list:
        return messages

    def after_evaluate(self, rnd: int, replies: list) -> dict:
        return {}

    def after_round(self, rnd: int, arrays) -> dict:
        return {}

    def summary(self) -> dict:
        return {}
