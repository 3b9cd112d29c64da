"""MedMNIST (Yang et al., "MedMNIST v2", Scientific Data 2023): ``dataset=medmnist:<flag>``.

The 2D sets are read with the ``medmnist`` package from ``data.root/<flag>[_<size>].npz`` (its own
format, downloaded from Zenodo when ``data.download`` allows), at 28 pixels or, with
``data.image_size``, 64, 128 or 224. The official splits are kept: the sites share ``train``, the
server tests on ``test``; ``val`` (meant for model selection) is not used. Binary and ordinal tasks
(RetinaMNIST's 5 grades) train as classes with cross-entropy, as the MedMNIST v2 baselines do;
multi-label ChestMNIST and the 3D volumes are refused with the reason.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedcls.data.sources import Dataset, SourceSpec, _dataset
from fedcls.errors import ConfigError, DataError, unknown_name
from fedcls.schema import DataConfig

SIZES = (28, 64, 128, 224)  # MedMNIST+ sizes of every 2D set
MULTI_LABEL = "multi-label, binary-class"


@lru_cache(maxsize=1)
def _info() -> dict:
    from medmnist.info import INFO

    return INFO


def flags_2d() -> list[str]:
    """The 2D sets fedcls can train on (single-label)."""
    return [f for f, i in _info().items() if not f.endswith("3d") and i["task"] != MULTI_LABEL]


def check_flag(flag: str) -> dict:
    """The set's INFO entry; ConfigError naming the fix for unknown, 3D or multi-label sets."""
    info = _info()
    if flag not in info:
        raise unknown_name("MedMNIST set", flag, [f"medmnist:{f}" for f in flags_2d()], key="dataset")
    if flag.endswith("3d"):
        raise ConfigError(f"dataset=medmnist:{flag} holds 3D volumes (28x28x28); fedcls trains 2D image "
                          f"classifiers: choose a 2D set ({', '.join(flags_2d())})")
    if info[flag]["task"] == MULTI_LABEL:
        raise ConfigError(f"dataset=medmnist:{flag} is multi-label ({len(info[flag]['label'])} findings per image, "
                          f"each present or not); fedcls trains single-label classifiers (one class per image): "
                          f"choose a single-label set ({', '.join(flags_2d())})")
    return info[flag]


def size_of(data: DataConfig) -> int:
    size = data.image_size or 28
    if size not in SIZES:
        raise ConfigError(f"data.image_size={data.image_size}: MedMNIST ships {', '.join(map(str, SIZES))} pixels "
                          f"(0: 28); pick one of them")
    return size


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _root(data: DataConfig) -> Path:
    return Path(data.root).expanduser()


def _splits(flag: str, data: DataConfig):
    """(train, test) medmnist datasets, read from data.root (downloaded first when allowed)."""
    import medmnist

    info, size, root = check_flag(flag), size_of(data), _root(data)
    cls = getattr(medmnist, info["python_class"])
    path = root / file_name(flag, size)
    if data.download and not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            cls(split="train", root=str(root), size=size, download=True)
        except RuntimeError:
            pass  # reported below with the file and folder to fill
    if not path.exists():
        url = info["url" if size == 28 else f"url_{size}"]
        raise DataError(f"dataset=medmnist:{flag} needs {path.name} in {root} (data.root) and it could not be "
                        f"downloaded: fetch {url} on a machine with network, put it there (or set "
                        f"data.root=<folder holding it>); data.download=true fetches it where the network allows")
    try:
        return tuple(cls(split=split, root=str(root), size=size) for split in ("train", "test"))
    except (KeyError, ValueError, OSError) as err:
        raise DataError(f"{path} is not a MedMNIST .npz (train_images, train_labels, test_images, test_labels): "
                        f"{type(err).__name__}: {err}; download it again") from None


def _images(imgs: np.ndarray) -> torch.Tensor:
    """MedMNIST's uint8 N x H x W (grey) or N x H x W x 3 (colour) as N x C x H x W."""
    x = torch.as_tensor(np.ascontiguousarray(imgs), dtype=torch.uint8)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def _labels(labels: np.ndarray, flag: str, classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64))
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise DataError(f"dataset=medmnist:{flag}: labels outside 0..{classes - 1} in its .npz; download it again")
    return y


def load(flag: str, data: DataConfig) -> Dataset:
    info = check_flag(flag)
    train, test = _splits(flag, data)
    classes = len(info["label"])
    names = [info["label"][str(c)] for c in range(classes)]
    return _dataset(f"medmnist:{flag}", _images(train.imgs), _labels(train.labels, flag, classes),
                    _images(test.imgs), _labels(test.labels, flag, classes), classes, classes=names)


def train_size(flag: str, data: DataConfig) -> int:
    """The train split's size: read from the file when it is there, else MedMNIST's own count."""
    path = _root(data) / file_name(flag, size_of(data))
    try:
        with np.load(path) as arrays:  # reads the labels alone
            return int(arrays["train_labels"].shape[0])
    except (OSError, KeyError, ValueError):
        return int(check_flag(flag)["n_samples"]["train"])


def spec(flag: str) -> SourceSpec:
    check_flag(flag)
    return SourceSpec(lambda data: len(check_flag(flag)["label"]), lambda data: train_size(flag, data),
                      lambda data: load(flag, data))
