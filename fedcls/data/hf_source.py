"""Hugging Face datasets: ``dataset=hf:<name on the Hub, or a local folder>``.

Read with the ``datasets`` library: a folder written by ``save_to_disk``, a folder of parquet /
arrow / csv files (``load_dataset``'s own detection, splits named by the file names), or a Hub
name, from the HF cache when offline. ``data.hf`` names the image and label columns and the splits.
Images become uint8 tensors once per dataset and config and are kept as an .npz under
``data.root/hf`` (every Ray actor then reads arrays, not Arrow and PNG). The train split's other
scalar columns (writer, hospital, device ids) travel along for ``partition.kind=natural``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from fedcls.caching import BoundedCache, cached_npz
from fedcls.data.sources import MAX_SIDE, Dataset, SourceSpec, _dataset, held_out_split
from fedcls.errors import ConfigError, DataError
from fedcls.schema import DataConfig

CACHE_VERSION = 1  # bump when the conversion changes


def _local(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.exists() else None


def _fingerprint(name: str) -> list:
    """What a local dataset's files are (name, size, mtime): a changed file makes a new cache entry."""
    path = _local(name)
    if path is None:
        return [name]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path.parent)), p.stat().st_size, int(p.stat().st_mtime)] for p in files]


def cache_path(name: str, data: DataConfig) -> Path:
    hf = data.hf
    key = json.dumps([CACHE_VERSION, _fingerprint(name), hf.subset, hf.train_split, hf.test_split, hf.image_column,
                      hf.label_column, data.image_size, data.test_fraction, data.split_seed])
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/~"))[-60:]
    return Path(data.root).expanduser() / "hf" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """With data.download=false, the Hub is not asked (the HF cache or a local folder only): its
    client otherwise retries for ~25 s before an offline machine's error."""
    import datasets
    import huggingface_hub

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    if offline:
        huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _open(name: str, data: DataConfig):
    """The dataset's splits ({split: datasets.Dataset}), or a DataError naming the fix."""
    import datasets

    datasets.disable_progress_bars()
    path, subset = _local(name), data.hf.subset
    try:
        with _hub_offline(not data.download):
            loaded = _load(datasets, name, path, subset, data)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        where = (f"the folder {path} holds no dataset load_dataset reads (parquet, arrow, csv files or "
                 f"save_to_disk output)" if path is not None else
                 f"'{name}' is neither a local folder nor in the Hugging Face cache, and the Hub could not be "
                 f"reached{' (data.download=false)' if not data.download else ''}. On a machine with network run: "
                 f"python -c \"import datasets; datasets.load_dataset('{name}'{', ' + repr(subset) if subset else ''})\" "
                 f"(it fills ~/.cache/huggingface), or save it with .save_to_disk(<folder>) and set dataset=hf:<folder>")
        raise DataError(f"dataset=hf:{name}: {where} ({type(err).__name__}: {str(err)[:200]})") from None
    return loaded if isinstance(loaded, dict) else {"train": loaded}


def _load(datasets, name: str, path: Path | None, subset: str | None, data: DataConfig):
    if path is not None and path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
        return datasets.load_from_disk(str(path))
    if path is not None:  # its Arrow cache next to fedcls's arrays, not in the user's HF cache
        return datasets.load_dataset(str(path), subset, cache_dir=str(cache_path(name, data).parent / "arrow"))
    return datasets.load_dataset(name, subset)


def _column(split, column: str, key: str, name: str):
    if column not in split.column_names:
        raise DataError(f"dataset=hf:{name} has no column '{column}' ({key}); its columns: "
                        f"{', '.join(split.column_names)}: set {key}=<one of them>")
    return split.features[column]


def _classes(train, test, name: str, column: str) -> tuple[list[str], dict]:
    """Class names and {raw label: class id}: a ClassLabel's own names, else the sorted values."""
    import datasets

    feature = _column(train, column, "data.hf.label_column", name)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), {i: i for i in range(feature.num_classes)}
    if not isinstance(feature, datasets.Value):
        raise DataError(f"dataset=hf:{name}: column '{column}' holds {type(feature).__name__} values (several labels "
                        f"per image?); fedcls trains single-label classifiers: name a column with one class per "
                        f"image in data.hf.label_column")
    values = sorted(set(train[column]) | (set(test[column]) if test is not None else set()), key=str)
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _shape(first, size: int) -> tuple[int, int, int]:
    """(channels, height, width) every image is brought to: the first image's mode and size unless
    data.image_size resizes them."""
    channels = 1 if first.mode in ("L", "1", "I", "I;16", "F") else 3
    width, height = first.size
    if not size and max(width, height) > MAX_SIDE:
        raise DataError(f"the first image is {width} x {height} pixels: set data.image_size=<side, at most {MAX_SIDE}>")
    return channels, size or height, size or width


def _as_image(value):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # C x H x W arrays
    array = array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _images(split, column: str, shape: tuple[int, int, int]) -> torch.Tensor:
    channels, height, width = shape
    out = np.zeros((len(split), height, width, channels), dtype=np.uint8)
    values = (v for batch in split.select_columns([column]).iter(batch_size=1024) for v in batch[column])
    for i, value in enumerate(values):  # a batch of decoded images at a time, not the whole split
        img = _as_image(value).convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):  # data.image_size, or the first image's size
            img = img.resize((width, height))
        out[i] = np.asarray(img).reshape(height, width, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _scalar_columns(split, skip: set[str]) -> dict[str, np.ndarray]:
    """The split's scalar columns (ids, names, numbers) besides the image and label."""
    import datasets

    columns = {c: np.asarray(split[c]) for c, f in split.features.items()
               if c not in skip and isinstance(f, (datasets.Value, datasets.ClassLabel))}
    # missing values make object arrays, which .npz keeps only by pickling: as text instead
    return {c: v.astype(str) if v.dtype == object else v for c, v in columns.items()}


def convert(name: str, data: DataConfig) -> dict[str, np.ndarray]:
    """The dataset as arrays: train_x/y, test_x/y, classes and the train split's other columns."""
    hf = data.hf
    splits = _open(name, data)
    if hf.train_split not in splits:
        raise DataError(f"dataset=hf:{name} has no split '{hf.train_split}' (data.hf.train_split); its splits: "
                        f"{', '.join(splits)}")
    train = splits[hf.train_split]
    if hf.test_split is not None and hf.test_split not in splits and hf.test_split != "test":
        raise DataError(f"dataset=hf:{name} has no split '{hf.test_split}' (data.hf.test_split); its splits: "
                        f"{', '.join(splits)}; data.hf.test_split=null holds out data.test_fraction of train")
    test = splits.get(hf.test_split) if hf.test_split is not None else None
    if not len(train):
        raise DataError(f"dataset=hf:{name}: split '{hf.train_split}' is empty")
    _column(train, hf.image_column, "data.hf.image_column", name)
    classes, index = _classes(train, test, name, hf.label_column)
    shape = _shape(_as_image(train[0][hf.image_column]), data.image_size)
    x, y = _images(train, hf.image_column, shape), np.array([index[v] for v in train[hf.label_column]])
    columns = _scalar_columns(train, {hf.image_column, hf.label_column})
    if test is None:  # no test split: hold out a stratified share of train, as the embedded sets do
        keep, out = held_out_split(y, data)
        tx, ty = x[torch.as_tensor(out)], y[out]
        x, y, columns = x[torch.as_tensor(keep)], y[keep], {c: v[keep] for c, v in columns.items()}
    else:
        _column(test, hf.image_column, "data.hf.image_column", name)
        tx, ty = _images(test, hf.image_column, shape), np.array([index[v] for v in test[hf.label_column]])
    return {"train_x": x.numpy(), "train_y": y.astype(np.int64), "test_x": tx.numpy(), "test_y": ty.astype(np.int64),
            "classes": np.array(classes, dtype=str), **{f"column:{c}": v for c, v in columns.items()}}


ARRAYS = ("train_x", "train_y", "test_x", "test_y", "classes")
_LOADED = BoundedCache(size=1)  # per process: the checks and the run read one dataset's arrays once


def _arrays(name: str, data: DataConfig) -> dict[str, np.ndarray]:
    """convert()'s arrays, from the .npz cache under data.root when it is there."""
    path = cache_path(name, data)
    return _LOADED.get_or_build(str(path), lambda: cached_npz(path, lambda: convert(name, data), ARRAYS))


def load(name: str, data: DataConfig) -> Dataset:
    a = _arrays(name, data)
    classes = [str(c) for c in a["classes"]]
    ds = _dataset(f"hf:{name}", torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"]),
                  torch.from_numpy(a["test_x"]), torch.from_numpy(a["test_y"]), len(classes), classes=classes)
    ds.columns = {k.split(":", 1)[1]: v for k, v in a.items() if k.startswith("column:")}
    return ds


def spec(name: str) -> SourceSpec:
    if not name:
        raise ConfigError("dataset=hf: needs a name: dataset=hf:<Hugging Face name or local folder>")
    return SourceSpec(lambda data: len(_arrays(name, data)["classes"]),
                      lambda data: len(_arrays(name, data)["train_y"]), lambda data: load(name, data))
