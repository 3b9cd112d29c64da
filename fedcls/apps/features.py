"""The feature registry: every plug-in (fedcls.algorithms.feature.Feature), in the order their
halves run (continual learning first: its data and hooks come before the others'). The round loop
and the ClientApp ask it for the enabled halves and name no feature themselves.

Adding a feature: define its FEATURE (server and/or client half) in its own module and list it here.
"""

from __future__ import annotations

from fedcls.algorithms import compression, coral, coral_align, domain_eval, dpsgd, privacy
from fedcls.algorithms.continual import feature as continual
from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.apps import faults
from fedcls.data.federated import FederatedData
from fedcls.schema import Config

FEATURES: tuple[Feature, ...] = (continual.FEATURE, domain_eval.FEATURE, coral.FEATURE, coral_align.FEATURE,
                                 faults.FEATURE, privacy.FEATURE, dpsgd.FEATURE, compression.FEATURE)  # compression last: it encodes what goes out


def enabled_features(cfg: Config) -> list[Feature]:
    return [f for f in FEATURES if f.enabled(cfg)]


def extensions_for(cfg: Config, data: FederatedData) -> list[Extension]:
    """The enabled features' server halves, handed the federation's data."""
    return [f.server(cfg, data) for f in enabled_features(cfg) if f.server is not None]


def client_halves(cfg: Config) -> list[ClientHalf]:
    """The enabled features' client halves."""
    return [f.client(cfg) for f in enabled_features(cfg) if f.client is not None]
