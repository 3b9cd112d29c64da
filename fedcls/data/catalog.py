"""Every dataset a config can name: the built-in sources (fedcls.data.sources) and the families
named with a prefix, ``medmnist:<flag>`` (fedcls.data.medmnist_source) and ``hf:<name or folder>``
(fedcls.data.hf_source)."""

from __future__ import annotations

from collections.abc import Callable

from fedcls.data import hf_source, medmnist_source
from fedcls.data.sources import SOURCES, Dataset, SourceSpec
from fedcls.errors import unknown_name
from fedcls.schema import DataConfig

FAMILIES: dict[str, Callable[[str], SourceSpec]] = {"medmnist": medmnist_source.spec, "hf": hf_source.spec}


def dataset_names() -> list[str]:
    """What dataset= takes, as --help and error messages list it."""
    return [*SOURCES, "medmnist:<flag>", "hf:<name or folder>"]


def source_spec(name: str, key: str = "dataset") -> SourceSpec:
    """The source `name` names; ConfigError (naming `key`) for an unknown one."""
    family, colon, arg = str(name).partition(":")
    if colon and family in FAMILIES:
        return FAMILIES[family](arg)
    if name in SOURCES:
        return SOURCES[name]
    raise unknown_name("dataset", name, dataset_names(), key=key)


def load_dataset(name: str, data: DataConfig) -> Dataset:
    """Dataset `name` as tensors, read as the data section says."""
    return source_spec(name).load(data)
