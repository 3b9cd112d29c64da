"""The server-side features a config turns on, in the order the round loop calls them.

Each is a fedcls.algorithms.extension.Extension subclass living with its feature.
"""

from __future__ import annotations

from fedcls.algorithms.extension import Extension


def extensions_for(cfg: dict) -> list[Extension]:
    from fedcls.algorithms import continual

    out: list[Extension] = []
    if continual.enabled(cfg):
        from fedcls.algorithms.continual.server import ContinualServer

        out.append(ContinualServer(cfg))
    if cfg["domain"]["targets"]:
        from fedcls.algorithms.domain_eval import DomainEvaluation

        out.append(DomainEvaluation(cfg))
    if cfg["coral"]["enabled"]:
        from fedcls.algorithms.coral import CoralServer

        out.append(CoralServer(cfg))
    if cfg["coral"]["align"] == "recolour":
        from fedcls.algorithms.coral_align import RecolourServer

        out.append(RecolourServer(cfg))
    return out
