"""The federation's data: the dataset, its partition, and each site's train/test split."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedcls.caching import BoundedCache
from fedcls.data.catalog import load_dataset
from fedcls.data.domains import domain_view, site_domain
from fedcls.data.partition import Partition, make_partition
from fedcls.data.sources import Dataset
from fedcls.schema import Config

DATA_KEYS = ("dataset", "data", "partition", "num_clients", "seed", "domain")
NORMALIZE = ("standardize", "none")  # data.normalize: the model's input units


@dataclass
class Site:
    """One site's local train and test indices into its pool (the dataset's train pool, or the
    target dataset's for a target site holding another dataset), feature noise and domain."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    noise_std: float
    domain: str = "identity"
    foreign: bool = False  # holds domain.target_dataset rather than a share of `dataset`


@dataclass
class FederatedData:
    dataset: Dataset
    partition: Partition
    sites: list[Site]
    target: Dataset | None = None  # domain.target_dataset, held by the target sites
    seed: int = 0  # draws the site domains' noise


@dataclass
class SiteTensors:
    """A site's normalised data on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    noise_scale: torch.Tensor  # per-channel std of the site's feature noise in input units


def data_key(cfg: Config) -> str:
    """Identifies everything the federation's data depends on (a cache key)."""
    values = cfg.to_dict()
    return json.dumps({k: values[k] for k in DATA_KEYS}, sort_keys=True)


def with_input_units(ds: Dataset, mode: str) -> Dataset:
    """The dataset under `data.normalize`: ``standardize`` keeps the train pool's per-channel
    mean and std (inputs of mean 0, std 1); ``none`` sets them to 0 and 1, so inputs are the
    plain pixels / 255 in [0, 1], as NIID-Bench feeds MNIST and CIFAR-10 (ToTensor only).
    Every consumer (sites, the server's test set, deployed sites through federation_info)
    normalises with these two vectors, so one place decides the units."""
    if mode == "standardize":
        return ds
    return replace(ds, mean=torch.zeros_like(ds.mean), std=torch.ones_like(ds.std))


def local_split(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of one site's share; `fraction` 0 keeps all of it for training
    (an empty local test split, as in NIID-Bench and most papers)."""
    shuffled = rng.permutation(idx)
    n_test = min(round(len(idx) * fraction), max(len(idx) - 1, 0))  # keep one to train on
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def build_federated_data(cfg: Config) -> FederatedData:
    """Load the dataset, partition its train pool and split each part into local train/test.
    With domain.target_dataset, the target sites share that dataset's pool (IID) instead."""
    units = cfg.data.normalize
    dataset, n, d = with_input_units(load_dataset(cfg.dataset, cfg.data), units), cfg.num_clients, cfg.domain
    foreign = set(d.targets) if d.target_dataset else set()
    holders = [s for s in range(n) if s not in foreign]
    labels = dataset.train_y.numpy()
    partition = make_partition(labels, len(holders), cfg.partition, cfg.seed, dataset.columns,
                               Path(cfg.data.root).expanduser())
    target = with_input_units(load_dataset(d.target_dataset, cfg.data), units) if foreign else None
    shares = dict(zip(holders, zip(partition.indices, partition.noise_std)))
    if foreign:
        pool = np.random.default_rng([cfg.seed, 0x7A6]).permutation(len(target.train_y))
        shares.update({t: (part, 0.0) for t, part in zip(sorted(foreign), np.array_split(pool, len(foreign)))})
    rng = np.random.default_rng([cfg.seed, 0x5E57])
    sites = []
    for s in range(n):
        idx, noise = shares[s]
        train, test = local_split(idx, cfg.data.local_test_fraction, rng)
        sites.append(Site(train, test, noise, site_domain(d, s), s in foreign))
    return FederatedData(dataset, partition, sites, target, cfg.seed)


def site_images(data: FederatedData, site_id: int) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, test_x, test_y) of a site: its images through its device domain, in
    stored units (a target dataset keeps its own look: that is the shift)."""
    site = data.sites[site_id]
    pool = data.target if site.foreign else data.dataset
    parts = []
    for part, idx in enumerate((torch.as_tensor(site.train_idx), torch.as_tensor(site.test_idx))):
        parts += [domain_view(data.dataset, pool.train_x[idx], site.domain, [data.seed, part, site_id]),
                  pool.train_y[idx]]
    return tuple(parts)


def site_tensors(data: FederatedData, site_id: int, device: torch.device) -> SiteTensors:
    """Site `site_id`'s data, normalised with the federation's statistics, on `device`."""
    ds = data.dataset
    train_x, train_y, test_x, test_y = site_images(data, site_id)
    scale = (data.sites[site_id].noise_std / ds.std).to(device)  # noise is defined on [0, 1] pixels (NIID-Bench)
    return SiteTensors(ds.normalize(train_x).to(device), train_y.to(device), ds.normalize(test_x).to(device),
                       test_y.to(device), scale)



_DATA = BoundedCache(size=4)  # federations kept per process (a sweep reuses one across its strategies)


def federated_data(cfg: Config) -> FederatedData:
    """The federation data (dataset, partition, site splits) for this config, built once per process."""
    return _DATA.get_or_build(data_key(cfg), lambda: build_federated_data(cfg))
