"""Non-IID partitions with NIID-Bench's definitions (Li et al., "Federated Learning on Non-IID
Data Silos: An Experimental Study", ICDE 2022, Sec. III and their partition code).

Each function maps training labels to one index array per client, using only the numpy
Generator it is given, so a partition depends on the seed alone (not on training). Written by
hand: Flower Datasets has similar partitioners but draws differently from NIID-Bench, whose
definitions the reference numbers use; its own partitioners are partition.kind=flwr:<Name>
(fedcls.data.flower_partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedcls.data.flower_partitions import PREFIX, flower_sites, partitioner_class
from fedcls.errors import ConfigError, unknown_name
from fedcls.schema import PartitionConfig

MAX_REDRAWS = 1000


@dataclass
class Partition:
    """Index arrays into the train pool, one per client, and each client's feature-noise std."""

    indices: list[np.ndarray]
    noise_std: list[float]
    names: list[str] | None = None  # partition.kind=natural: the id each site holds (writer, hospital)

    def class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """clients x classes matrix of sample counts."""
        return np.stack([np.bincount(labels[i], minlength=num_classes) for i in self.indices])


def iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and split into n near-equal parts."""
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), n)]


def dirichlet(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float,
              min_size: int) -> list[np.ndarray]:
    """Per class, shares p ~ Dir(alpha) over clients; a client already holding N/n samples gets
    no more; redraw until every client has >= min_size samples."""
    classes = np.unique(labels)
    for _ in range(MAX_REDRAWS):
        parts: list[list[int]] = [[] for _ in range(n)]
        for c in classes:
            idx_c = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n, alpha))
            shares = shares * np.array([len(p) < len(labels) / n for p in parts])
            cuts = (np.cumsum(shares / shares.sum()) * len(idx_c)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx_c, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"partition.kind=dirichlet found no split giving all {n} clients >= partition.min_size="
        f"{min_size} samples in {MAX_REDRAWS} draws; lower partition.min_size or num_clients, "
        f"or raise partition.alpha")


def label_k(labels: np.ndarray, n: int, rng: np.random.Generator, k: int) -> list[np.ndarray]:
    """#C=k: client i holds label i % K plus k-1 distinct random labels; each label's samples
    are split equally among its holders."""
    classes = np.unique(labels)
    holders: list[list[int]] = []
    for i in range(n):
        own = [int(classes[i % len(classes)])]
        while len(own) < k:
            pick = int(classes[rng.integers(len(classes))])
            if pick not in own:
                own.append(pick)
        holders.append(own)
    parts: list[list[int]] = [[] for _ in range(n)]
    for c in classes:
        owners = [i for i in range(n) if int(c) in holders[i]]
        if not owners:
            continue
        idx_c = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx_c, len(owners))):
            parts[owner].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def shards(labels: np.ndarray, n: int, rng: np.random.Generator,
           shards_per_client: int) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into n*s shards, give each client s at random."""
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n * shards_per_client)
    assignment = rng.permutation(len(pieces)).reshape(n, shards_per_client)
    return [np.sort(np.concatenate([pieces[j] for j in row])) for row in assignment]


def quantity(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float,
             min_size: int) -> list[np.ndarray]:
    """Quantity skew: client sizes ~ Dir(alpha) (redrawn until all >= min_size), IID labels."""
    order = rng.permutation(len(labels))
    for _ in range(MAX_REDRAWS):
        shares = rng.dirichlet(np.full(n, alpha))
        if (shares * len(labels)).min() >= min_size:
            cuts = (np.cumsum(shares) * len(labels)).astype(int)[:-1]
            return [np.sort(part) for part in np.split(order, cuts)]
    raise ConfigError(
        f"partition.kind=quantity found no sizes giving all {n} clients >= partition.min_size="
        f"{min_size} samples in {MAX_REDRAWS} draws; lower partition.min_size or num_clients, "
        f"or raise partition.alpha")


KINDS = ("iid", "dirichlet", "label_k", "shards", "quantity", "noise", "natural")  # and flwr:<Partitioner>


def check_kind(kind: str) -> None:
    """ConfigError unless `kind` is one of KINDS or flwr:<a Flower Datasets partitioner>."""
    if kind.startswith(PREFIX):
        partitioner_class(kind)
    elif kind not in KINDS:
        raise unknown_name("partition kind", kind, [*KINDS, f"{PREFIX}<Partitioner>"], key="partition.kind")


def make_partition(labels: np.ndarray, n: int, spec: PartitionConfig, seed: int,
                   columns: dict[str, np.ndarray] | None = None, cache_dir: Path | None = None) -> Partition:
    """Partition `labels` over n clients as `spec` (the config's partition section) says;
    `columns`: the pool's other columns (partition.kind=natural reads its id column there);
    `cache_dir`: where Flower's splits are kept for the next process (flower_partitions.flower_sites).

    The generator is seeded by (seed, a fixed stream id), apart from the training RNGs; Flower's
    partitioners take the seed itself (partition.args.seed overrides it).
    """
    rng = np.random.default_rng([seed, 0xDA7A])
    kind = spec.kind
    if kind.startswith(PREFIX) or kind == "natural":
        parts, names = flower_sites(spec, labels, columns or {}, n, seed, cache_dir)
        return Partition(parts, [0.0] * n, names)
    if kind == "dirichlet":
        parts = dirichlet(labels, n, rng, spec.alpha, spec.min_size)
    elif kind == "label_k":
        parts = label_k(labels, n, rng, spec.k)
    elif kind == "shards":
        parts = shards(labels, n, rng, spec.shards_per_client)
    elif kind == "quantity":
        parts = quantity(labels, n, rng, spec.alpha, spec.min_size)
    else:  # iid, and noise (IID labels, feature noise growing with the client index)
        parts = iid(labels, n, rng)
    noise = [spec.sigma * i / max(n - 1, 1) if kind == "noise" else 0.0 for i in range(n)]
    return Partition(parts, noise)
