"""Each site's data as an Avalanche stream of experiences, and the global test set per experience.

class_incremental: the classes, in a seeded order (``class_order=seeded``) or 0..K-1
(``fixed``), are cut into ``experiences`` groups; experience e of a site is the part of the
site's own partition whose labels are in group e, so the Non-IID partition applies within
every experience (a site may hold few or no samples of an experience).
domain_incremental: every experience holds all of the site's data, seen through domain e of
``continual.domains`` (rotation, noise, contrast, ...; see fedcls.data.domains).

The stream itself is Avalanche's (``benchmark_from_datasets``); fedcls's loop trains on the
experience's tensors, and Avalanche's plugins read ``experience.dataset`` as in Avalanche.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

# the tensor-dataset maker of Avalanche 0.6 (its public make_tensor_classification_dataset is gone)
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)

from fedcls.data.domains import normalized_view
from fedcls.data.federated import FederatedData, SiteTensors
from fedcls.data.sources import Dataset
from fedcls.schema import Config

STREAM_KEYS = ("kind", "experiences", "class_order", "domains")


def stream_key(cfg: Config) -> str:
    """What a site's stream depends on besides the federation's data (a cache key)."""
    return json.dumps({k: getattr(cfg.continual, k) for k in STREAM_KEYS}, sort_keys=True)


def class_groups(cfg: Config, num_classes: int) -> list[list[int]]:
    """The classes of each experience (class_incremental)."""
    c = cfg.continual
    order = (np.random.default_rng([cfg.seed, 0xC1A55]).permutation(num_classes)
             if c.class_order == "seeded" else np.arange(num_classes))
    return [sorted(int(k) for k in g) for g in np.array_split(order, c.experiences)]


def _view(ds: Dataset, x: torch.Tensor, cfg: Config, e: int, seed: list[int]) -> torch.Tensor:
    """Raw images of experience e, normalised (through domain e when domain_incremental)."""
    c = cfg.continual
    spec = c.domains[e] if c.kind == "domain_incremental" else "identity"
    return normalized_view(ds, x, spec, [cfg.seed, e, *seed])


def _members(cfg: Config, y: torch.Tensor, e: int, num_classes: int) -> torch.Tensor:
    """Indices (into y) of the samples that belong to experience e."""
    if cfg.continual.kind != "class_incremental":
        return torch.arange(len(y))
    group = torch.tensor(class_groups(cfg, num_classes)[e])
    return torch.nonzero(torch.isin(y, group)).flatten()


def global_test_sets(cfg: Config, data: FederatedData) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of the global test set for each experience."""
    ds, out = data.dataset, []
    for e in range(cfg.continual.experiences):
        idx = _members(cfg, ds.test_y, e, ds.num_classes)
        out.append((_view(ds, ds.test_x[idx], cfg, e, [0x7E57]), ds.test_y[idx]))
    return out


@dataclass
class SiteStream:
    """A site's experiences: tensors for the loop, Avalanche's scenario for plugins."""

    tensors: list[SiteTensors]
    scenario: object  # avalanche CLScenario with train_stream / test_stream

    def train_experience(self, e: int):
        return self.scenario.train_stream[e]

    def seen_test(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The site's local test data of experiences 0..e."""
        parts = self.tensors[: e + 1]
        return torch.cat([t.test_x for t in parts]), torch.cat([t.test_y for t in parts])


def site_stream(cfg: Config, data: FederatedData, site_id: int, device: torch.device) -> SiteStream:
    """Site `site_id`'s stream of experiences."""
    ds, site = data.dataset, data.sites[site_id]
    scale = (site.noise_std / ds.std).to(device)
    tr_x, tr_y = ds.train_x[torch.as_tensor(site.train_idx)], ds.train_y[torch.as_tensor(site.train_idx)]
    te_x, te_y = ds.train_x[torch.as_tensor(site.test_idx)], ds.train_y[torch.as_tensor(site.test_idx)]
    tensors, train_sets, test_sets = [], [], []
    for e in range(cfg.continual.experiences):
        a, b = _members(cfg, tr_y, e, ds.num_classes), _members(cfg, te_y, e, ds.num_classes)
        x, y = _view(ds, tr_x[a], cfg, e, [site_id]), tr_y[a]
        tx, ty = _view(ds, te_x[b], cfg, e, [site_id, 1]), te_y[b]
        tensors.append(SiteTensors(x.to(device), y.to(device), tx.to(device), ty.to(device), scale))
        train_sets.append(tensor_dataset(x, y, task_labels=0))
        test_sets.append(tensor_dataset(tx, ty, task_labels=0))
    return SiteStream(tensors, benchmark_from_datasets(train=train_sets, test=test_sets))
