"""Continual federated learning: each site's data arrives as a stream of experiences.

    schedule.py   which experience each site is on in each round (synchronous or staggered,
                  late joiners), and where the federation's experiences end
    streams.py    each site's Avalanche stream (``benchmark_from_datasets`` over the site's
                  partition, split by class groups or seen through a sequence of domains)
    plugins.py    Avalanche plugins (EWCPlugin, LwF, MAS, ...) driven from the one client loop
    replay.py     replay with Avalanche's ExperienceBalancedBuffer, its memory kept in client state
    client.py     the hooks a site adds for its continual method
    server.py     per-experience evaluation, the accuracy matrix, importance aggregation
    metrics.py    average accuracy, forgetting and BWT with Avalanche's definitions
    feature.py    the plug-in: its client half (a site's experience, the method's hooks) and server half

Off unless ``continual.kind`` is set (scenario files continual_classes, continual_domains).
"""

from fedcls.schema import Config

ENABLED_KINDS = ("class_incremental", "domain_incremental")


def enabled(cfg: Config) -> bool:
    return cfg.continual.kind in ENABLED_KINDS
