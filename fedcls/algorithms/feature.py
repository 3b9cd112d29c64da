"""Features as plug-ins with two halves, like strategies: continual learning, domain evaluation,
CORAL, closed-form recolouring and fault injection each declare a ``Feature`` (in their own
module) with a server half (an ``Extension`` of the round loop) and a client half (a
``ClientHalf`` of the ClientApp); fedcls.apps.features lists them, and neither the round loop nor
the ClientApp names any. The base classes do nothing, so a half overrides only what it needs.

Server half: the loop (fedcls.apps.federation) calls each extension at fixed points of every round:

    train_sites(rnd)         sites that may be sampled for training this round (None: all)
    before_train(rnd, arrays, grid, config)  before the strategy configures training (CORAL
                             asks sites for feature statistics here)
    outgoing(messages)       before the train messages go out (add named records)
    withhold(rnd, messages, site_of_node) -> (messages, sites)  the train messages actually
                             delivered and the sites whose message is not (fault injection: drops)
    arrived(rnd, replies, site_of_node, sent_at) -> the replies as they arrive by the round's
                             deadline (fault injection: stragglers answer late)
    incoming(replies)        before the strategy aggregates (take named records out)
    outgoing_evaluate(rnd, arrays, messages)  before the evaluate messages go out (CORAL's
                             closed-form alignment adds the sources' statistics)
    after_evaluate(rnd, replies) -> extra metrics from the sites' evaluation replies
    after_round(rnd, arrays) -> extra per-round metrics for metrics.jsonl
    summary()                -> extra keys for summary.json

Client half: the ClientApp (fedcls.apps.client_app) calls each enabled half, in the registry's order:

    site_round(runtime, site, rnd) -> SiteRound | None   the site's data this round (the first
                             half that answers wins; continual learning: the current experience)
    before_train(rnd, site)  before training (fault injection: an injected crash raises here)
    hooks_first(job, inbox) / hooks_last(job, inbox)  training hooks before / after the strategy's
    local_update(job) -> the training function, or None for the one loop (a CORAL target site)
    outgoing(job, weights, metrics) -> (weights, metrics) the reply carries (fault injection: poisoned, malicious)
    evaluation_hooks(inbox)  hooks after the strategy's, before a site evaluates
    answers(msg) / answer(model, x) -> RecordDict   a query this feature asks sites (CORAL's statistics)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedcls.data.federated import FederatedData
from fedcls.schema import Config


class Extension:
    def train_sites(self, rnd: int) -> set[int] | None:
        return None

    def before_train(self, rnd: int, arrays, grid, config) -> None:
        return None

    def outgoing(self, messages: list) -> list:
        return messages

    def withhold(self, rnd: int, messages: list, site_of_node: dict[int, int]) -> tuple[list, list[int]]:
        return messages, []

    def arrived(self, rnd: int, replies: list, site_of_node: dict[int, int], sent_at: float) -> list:
        return replies

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


@dataclass
class SiteRound:
    """A site's data in one round: ``data`` (SiteTensors) to train on; ``test``, when set, gives
    the labelled (x, y) it reports on instead of data's test split; the providing feature's own
    ``detail`` (continual: stream, experience)."""

    data: Any
    test: Callable[[], tuple] | None = None
    detail: Any = None

    def test_split(self) -> tuple:
        return (self.data.test_x, self.data.test_y) if self.test is None else self.test()


class ClientHalf:
    def site_round(self, runtime, site: int, rnd: int) -> SiteRound | None:
        return None

    def before_train(self, rnd: int, site: int) -> None:
        return None

    def hooks_first(self, job, inbox: dict) -> list:
        return []

    def hooks_last(self, job, inbox: dict) -> list:
        return []

    def local_update(self, job) -> Callable | None:
        return None

    def outgoing(self, job, weights: dict, metrics: dict) -> tuple[dict, dict]:
        return weights, metrics

    def evaluation_hooks(self, inbox: dict) -> list:
        return []

    def answers(self, msg) -> bool:
        return False

    def answer(self, model, x):
        raise NotImplementedError


@dataclass(frozen=True)
class Feature:
    """A plug-in: on when ``enabled(cfg)``; its server half is built from the config and the
    federation's data, its client half from the config (None: it has no such half). Builders import their modules lazily (continual learning imports Avalanche)."""

    name: str
    enabled: Callable[[Config], bool]
    server: Callable[[Config, FederatedData], Extension] | None = None
    client: Callable[[Config], ClientHalf] | None = None
