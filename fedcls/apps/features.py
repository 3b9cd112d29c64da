"""The feature registry: every plug-in (fedcls.algorithms.feature.Feature), in the order their
halves run (continual learning first: its data and hooks come before the others'). The round loop
and the ClientApp ask it for the enabled halves and name no feature themselves.

Adding a feature: define its FEATURE (server and/or client half) in its own module and list it here.
"""

from __future__ import annotations

from fedcls.algorithms import coral, coral_align, domain_eval
from fedcls.algorithms.continual import feature as continual
from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.apps import faults

FEATURES: tuple[Feature, ...] = (continual.FEATURE, domain_eval.FEATURE, coral.FEATURE, coral_align.FEATURE,
                                 faults.FEATURE)


def enabled_features(cfg: dict) -> list[Feature]:
    return [f for f in FEATURES if f.enabled(cfg)]


def extensions_for(cfg: dict) -> list[Extension]:
    """The enabled features' server halves."""
    return [f.server(cfg) for f in enabled_features(cfg) if f.server is not None]


def client_halves(cfg: dict) -> list[ClientHalf]:
    """The enabled features' client halves."""
    return [f.client(cfg) for f in enabled_features(cfg) if f.client is not None]
