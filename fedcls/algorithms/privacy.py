"""Central differential privacy (user level: a site's whole update), a plug-in with two halves over
Flower's own DP code (McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018; adaptive clipping: Andrew et al., NeurIPS 2021).

``privacy.dp``:
- ``central``: the server clips each site's update (trained - global weights) to
  ``privacy.clipping_norm`` and adds Gaussian noise of std ``noise_multiplier * clipping_norm / n``
  to the mean of the n sampled sites' clipped updates: Flower's
  ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` wrapped around the strategy;
- ``client_clipping``: the sites clip their own update with Flower's ``fixedclipping_mod`` before it
  leaves them, so the server never sees an unclipped update; the server adds the noise
  (``DifferentialPrivacyClientSideFixedClipping``).

Sound only where the released model is the mean itself (``Capabilities.plain_mean``: FedAvg,
FedProx, MOON): a server optimiser or server state (FedAdam's moments, FedDyn's h, SCAFFOLD's c)
would be computed from un-noised updates. The mean is uniform (each site weight 1, the sensitivity
the noise is sized for), not example-weighted: the server half sets each training reply's
``num-examples`` to 1 before the strategy averages (the server, not a site, decides the weights;
the screening has checked the claimed counts before).

Accounting: each round is one Gaussian mechanism with noise multiplier z on the uniform mean, composed
over the rounds without sampling amplification (the conservative choice Flower's own accounted mode
makes), with Opacus's RDP accountant (Mironov 2017): Flower 1.42's accountant needs the
``dp-accounting`` package, which pins ``attrs<24`` against the rest of the stack. With adaptive
clipping the configured z covers the norm updates too (Andrew et al., Thm. 1; Flower splits it).
The epsilon spent so far is in every metrics row (``privacy``) and in summary.json.

Written by hand: only the wiring (which wrapper, the uniform weight, the accountant's steps).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedcls.algorithms.feature import Extension, Feature
from fedcls.schema import Config

WEIGHT_KEY = "num-examples"  # the strategies' weight: 1 per site, the uniform mean the noise is sized for
CENTRAL = ("central", "client_clipping")


def central(cfg: Config) -> bool:
    return cfg.privacy.dp in CENTRAL


def wrap_strategy(strategy: Strategy, cfg: Config) -> Strategy:
    """The strategy inside the Flower DP wrapper ``privacy.dp`` and ``privacy.clipping`` name."""
    p, sampled = cfg.privacy, sampled_sites(cfg)
    if p.dp == "client_clipping":
        return DifferentialPrivacyClientSideFixedClipping(strategy, p.noise_multiplier, p.clipping_norm, sampled)
    if p.clipping == "adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(strategy, p.noise_multiplier, sampled,
                                                             initial_clipping_norm=p.clipping_norm)
    return DifferentialPrivacyServerSideFixedClipping(strategy, p.noise_multiplier, p.clipping_norm, sampled)


def sampled_sites(cfg: Config) -> int:
    """Sites Flower's FedAvg samples per round (its rule: int(fraction * available), at least min_train_nodes)."""
    return max(int(cfg.fraction_train * cfg.num_clients), 1)


def epsilon_after(rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of `rounds` Gaussian releases with noise multiplier z, no amplification (RDP)."""
    from opacus.accountants import RDPAccountant

    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, rounds)]  # (z, sample rate, steps): Opacus's own format
    return float(accountant.get_epsilon(delta))


class CentralPrivacyServer(Extension):
    """Seeds the noise per round (same config and seed, same noise) and counts the released rounds."""

    TRANSIENT = ("cfg",)  # rebuilt from the run's config on resume; `released` is checkpointed

    def __init__(self, cfg: Config):
        self.cfg, self.released, self.sent = cfg, 0, None

    def before_train(self, rnd: int, arrays, grid, config) -> None:
        self.sent = arrays
        np.random.seed(np.random.SeedSequence([self.cfg.seed, rnd, 0xD9]).generate_state(1)[0])  # Flower draws its noise from np.random

    def incoming(self, replies: list) -> list:
        usable = [m for m in replies if not m.has_error()]
        for reply in usable:
            next(iter(reply.content.metric_records.values()))[WEIGHT_KEY] = 1
        self.released += bool(usable)
        return replies

    def after_round(self, rnd: int, arrays) -> dict:
        """The privacy spent so far, and how far the noisy mean moved the model (the noise's share of
        it: sqrt(params) * z * C / n)."""
        moved = sum(float(np.sum((arrays[k].numpy().astype(np.float64) - self.sent[k].numpy()) ** 2))
                    for k in self.sent.keys() if np.issubdtype(self.sent[k].numpy().dtype, np.floating))
        return {"privacy": {**self.spent(), "update_norm": moved ** 0.5}}

    def spent(self) -> dict:
        p = self.cfg.privacy
        eps = epsilon_after(self.released, p.noise_multiplier, p.delta)
        return {"epsilon": eps if math.isfinite(eps) else None, "delta": p.delta,  # None: no noise, no guarantee
                "rounds_released": self.released, "noise_multiplier": p.noise_multiplier}

    def summary(self) -> dict:
        return {"privacy": {"dp": self.cfg.privacy.dp, "clipping": self.cfg.privacy.clipping,
                            "clipping_norm": self.cfg.privacy.clipping_norm, **self.spent()}}


def client_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` on the training messages that carry a clipping norm (sent by
    ``DifferentialPrivacyClientSideFixedClipping``); every other message passes untouched."""
    config = msg.content.config_records.get("config")
    if (msg.metadata.message_type == MessageType.TRAIN and isinstance(config, ConfigRecord)
            and KEY_CLIPPING_NORM in config):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


FEATURE = Feature("central_dp", central, server=lambda cfg, data: CentralPrivacyServer(cfg))
