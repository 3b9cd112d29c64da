"""Flower Datasets' partitioners on any fedcls dataset: ``partition.kind=flwr:<Partitioner>`` with
``partition.args``, and ``partition.kind=natural`` (a dataset's own sites: each value of
``partition.id_column`` is one site, through Flower's NaturalIdPartitioner).

The train pool's labels (column ``label``) and its other columns go into a Hugging Face Dataset
with a row-index column; the partitioner splits it and the index column says which rows each site
got, so a site holds exactly the rows flwr-datasets gives partition i of the same data, arguments
and seed. num_partitions, partition_by and seed default to num_clients, ``label`` and the run's seed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np

from fedcls.caching import cached_npz
from fedcls.errors import ConfigError, unknown_name

PREFIX = "flwr:"
INDEX = "__fedcls_row__"
ROW_SPLITTERS_ONLY = ("VerticalEvenPartitioner", "VerticalSizePartitioner",  # split columns, not rows
                      "IdToSizeFncPartitioner", "Partitioner")  # takes a function; the abstract base


def partitioner_names() -> list[str]:
    from flwr_datasets import partitioner

    return [n for n in partitioner.__all__ if n not in ROW_SPLITTERS_ONLY]


def partitioner_class(kind: str):
    """The Flower partitioner `kind` (flwr:<Name>) names; ConfigError for an unknown one."""
    from flwr_datasets import partitioner

    name = kind[len(PREFIX):]
    if name not in partitioner_names():
        raise unknown_name("Flower partitioner", kind, [PREFIX + n for n in partitioner_names()], key="partition.kind")
    return getattr(partitioner, name)


def _table(labels: np.ndarray, columns: dict[str, np.ndarray]):
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({**{k: v.tolist() for k, v in columns.items()}, "label": labels.tolist(),
                                       INDEX: list(range(len(labels)))})


def _split(partitioner, labels: np.ndarray, columns: dict[str, np.ndarray], n: int, what: str) -> list[np.ndarray]:
    partitioner.dataset = _table(labels, columns)
    try:
        count = partitioner.num_partitions
    except (ValueError, KeyError) as err:  # e.g. partition_by names no column
        raise ConfigError(f"{what}: {err}") from None
    if count != n:
        raise ConfigError(f"{what} makes {count} partitions but num_clients={n}: set num_clients={count}")
    try:
        return [np.sort(np.asarray(partitioner.load_partition(i)[INDEX], dtype=np.int64)) for i in range(n)]
    except ValueError as err:  # a partitioner that cannot satisfy its arguments (min_partition_size, ...)
        raise ConfigError(f"{what}: {err}") from None


def flower_partition(kind: str, args: dict, labels: np.ndarray, columns: dict[str, np.ndarray], n: int,
                     seed: int) -> list[np.ndarray]:
    """Row indices per site from Flower's partitioner `kind` with `args` (see the module)."""
    cls = partitioner_class(kind)
    params = inspect.signature(cls).parameters
    given = {"num_partitions": n, "partition_by": "label", "seed": seed}
    kwargs = {**{k: v for k, v in given.items() if k in params}, **dict(args)}
    if unknown := sorted(set(args) - set(params)):
        raise ConfigError(f"{kind} has no argument {', '.join(unknown)} (partition.args); its arguments: "
                          f"{', '.join(p for p in params if p != 'self')}")
    try:
        partitioner = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"partition.kind={kind} with partition.args={dict(args)}: {err}") from None
    return _split(partitioner, labels, columns, n, f"partition.kind={kind}")


def natural_partition(id_column: str | None, labels: np.ndarray, columns: dict[str, np.ndarray],
                      n: int) -> tuple[list[np.ndarray], list[str]]:
    """(row indices, id value) per site: one site per value of `id_column`, in sorted order of the
    values (Flower's NaturalIdPartitioner)."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    if id_column not in columns:
        have = ", ".join(columns) or "none: only hf: datasets bring columns besides images and labels"
        raise ConfigError(f"partition.kind=natural needs partition.id_column=<the column naming each sample's site>; "
                          f"got {id_column!r}; this dataset's columns: {have}")
    sites = NaturalIdPartitioner(partition_by=id_column)
    parts = _split(sites, labels, {id_column: columns[id_column]}, n,
                   f"partition.kind=natural over {id_column}'s {len(np.unique(columns[id_column]))} values")
    return parts, [str(sites.partition_id_to_natural_id[i]) for i in range(n)]


CACHE_VERSION = 1


def _cache_file(cache_dir: Path, spec, labels: np.ndarray, columns: dict[str, np.ndarray], n: int, seed: int) -> Path:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, spec.kind, dict(spec.args), spec.id_column, n, seed],
                                       sort_keys=True, default=str).encode())
    for name, values in sorted({"label": labels, **columns}.items()):
        digest.update(name.encode() + np.ascontiguousarray(values.astype(str) if values.dtype == object
                                                           else values).tobytes())
    return cache_dir / "partitions" / f"{digest.hexdigest()[:24]}.npz"


def flower_sites(spec, labels: np.ndarray, columns: dict[str, np.ndarray], n: int, seed: int,
                 cache_dir: Path | None = None) -> tuple[list[np.ndarray], list[str] | None]:
    """(row indices, natural id or None) per site for a flwr:<Partitioner> or natural `spec` (the
    config's partition section), kept in an .npz under `cache_dir` for the next process: the driver
    splits once and each Ray actor reads the file instead of importing flwr-datasets and splitting
    again (~3 s each). The file's name hashes the arguments, the labels and the columns."""

    def split() -> dict[str, np.ndarray]:
        if spec.kind.startswith(PREFIX):
            parts, names = flower_partition(spec.kind, spec.args, labels, columns, n, seed), None
        else:
            parts, names = natural_partition(spec.id_column, labels, columns, n)
        return {**{f"site{i}": p for i, p in enumerate(parts)},
                **({"names": np.array(names, dtype=str)} if names is not None else {})}

    sites = tuple(f"site{i}" for i in range(n))
    arrays = (split() if cache_dir is None
              else cached_npz(_cache_file(cache_dir, spec, labels, columns, n, seed), split, sites))
    return [arrays[s] for s in sites], (arrays["names"].tolist() if "names" in arrays else None)
