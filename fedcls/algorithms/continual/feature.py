"""Continual learning as a plug-in (fedcls.algorithms.feature): its client half gives a site its
current experience and its method's hooks, its server half is ContinualServer. Both import
lazily (the method's hooks import Avalanche)."""

from __future__ import annotations

from fedcls.algorithms.continual import enabled
from fedcls.algorithms.feature import ClientHalf, Feature, SiteRound
from fedcls.schema import Config


class ContinualClient(ClientHalf):
    """The client half: a site trains on its current experience with its method's hooks first
    (replay's memory joins the data the other hooks see) and reports on the experiences seen."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def site_round(self, runtime, site: int, rnd: int) -> SiteRound:
        from fedcls.algorithms.continual.schedule import site_experience

        stream, exp = runtime.stream(self.cfg, site), site_experience(self.cfg, site, rnd)
        return SiteRound(stream.tensors[exp], lambda: stream.seen_test(exp), (stream, exp))

    def hooks_first(self, job, inbox: dict) -> list:
        from fedcls.algorithms.continual.client import continual_hooks  # imports Avalanche: only when used

        stream, exp = job.site_round.detail
        return continual_hooks(self.cfg, stream, exp, job.state, inbox)


def _server(cfg: Config, data):
    from fedcls.algorithms.continual.server import ContinualServer

    return ContinualServer(cfg, data)


FEATURE = Feature("continual", enabled, server=_server, client=ContinualClient)
