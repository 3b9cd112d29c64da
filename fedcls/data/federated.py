"""The federation's data: the dataset, its partition, and each site's train/test split."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from fedcls.data.partition import Partition, make_partition
from fedcls.data.sources import Dataset, load_dataset

DATA_KEYS = ("dataset", "data", "partition", "num_clients", "seed")


@dataclass
class Site:
    """One site's local train and test indices into the train pool, and its feature noise."""

    train_idx: np.ndarray
    test_idx: np.ndarray
    noise_std: float


@dataclass
class FederatedData:
    dataset: Dataset
    partition: Partition
    sites: list[Site]


@dataclass
class SiteTensors:
    """A site's normalised data on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    noise_scale: torch.Tensor  # per-channel std of the site's feature noise in input units


def data_key(cfg: dict) -> str:
    """Identifies everything the federation's data depends on (a cache key)."""
    return json.dumps({k: cfg[k] for k in DATA_KEYS}, sort_keys=True)


def build_federated_data(cfg: dict) -> FederatedData:
    """Load the dataset, partition its train pool and split each part into local train/test."""
    dataset = load_dataset(cfg)
    labels = dataset.train_y.numpy()
    partition = make_partition(labels, cfg["num_clients"], cfg["partition"], cfg["seed"])
    rng = np.random.default_rng([cfg["seed"], 0x5E57])
    sites = []
    for idx, noise in zip(partition.indices, partition.noise_std):
        shuffled = rng.permutation(idx)
        n_test = int(round(len(idx) * cfg["data"]["local_test_fraction"]))
        n_test = min(n_test, max(len(idx) - 1, 0))  # keep at least one training sample
        sites.append(Site(np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test]), noise))
    return FederatedData(dataset, partition, sites)


def site_tensors(data: FederatedData, site_id: int, device: torch.device) -> SiteTensors:
    """Site `site_id`'s data, normalised, on `device`."""
    ds, site = data.dataset, data.sites[site_id]
    tr, te = torch.as_tensor(site.train_idx), torch.as_tensor(site.test_idx)
    scale = (site.noise_std / ds.std).to(device)  # noise is defined on [0, 1] pixels (NIID-Bench)
    return SiteTensors(ds.normalize(ds.train_x[tr]).to(device), ds.train_y[tr].to(device),
                       ds.normalize(ds.train_x[te]).to(device), ds.train_y[te].to(device), scale)
