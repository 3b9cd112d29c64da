"""A site's own data, for deployments: a folder on the site's disk named by the SuperNode's node
config (``data-dir``), instead of a share of a dataset picked by ``partition-id``.

A site folder holds either
- ``train/<class>/*.png`` (+ optional ``test/<class>/...``): torchvision's ImageFolder layout, or
- ``data.pt``: ``{"train_x", "train_y", "test_x", "test_y", "classes"}`` (images N x C x H x W
  in stored units, uint8 for 0-255 images; labels index ``classes``),
and optionally ``site.json`` (``{"site": <id>, "noise_std": <float>}``). Class names are mapped
onto the federation's class list, which the server sends with every message, so a site missing a
class, or listing its classes in another order, still gets the federation's labels. Images are
converted to the federation's channels and resized to its image size; without ``test/`` the site
keeps ``data.local_test_fraction`` of its images as its local test set (seeded; 0: none, every
image trains and the site reports no local accuracy). Images are read
in file-name order (then class), so a prepared folder gives back the simulated site exactly.

``python -m fedcls.prepare_sites`` writes such folders from any fedcls scenario (each site's share,
its device domain baked into the images), so a deployment can be rehearsed on one machine.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from fedcls.data.federated import FederatedData, Site, local_split
from fedcls.data.sources import Dataset, read_image_folder
from fedcls.errors import DataError
from fedcls.schema import Config

SITE_FILE, TENSOR_FILE = "site.json", "data.pt"
FEDERATION_KEY = "federation"  # entry of the config payload describing the federation's data


def federation_info(ds: Dataset) -> dict:
    """What a site needs to know of the federation's data: class names, image shape and the
    normalisation (the server sends it; sites hold only their own images). ``mean``/``std`` are
    what inputs are normalised with: the train pool's statistics under data.normalize=standardize,
    0 and 1 under none (plain [0, 1] pixels), so a site needs no other setting to match."""
    return {"classes": ds.class_names, "shape": list(ds.shape), "mean": ds.mean.tolist(),
            "std": ds.std.tolist(), "scale": ds.scale}


def site_meta(folder: str | Path) -> dict:
    path = Path(folder).expanduser() / SITE_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({err}): fix or delete it") from None


def folder_site_id(folder: str | Path) -> int:
    """The site id written in the folder's site.json."""
    meta = site_meta(folder)
    if "site" not in meta:
        raise DataError(f"{folder} has no {SITE_FILE} naming its site: set the SuperNode's node config "
                        f"site-id=<0..num_clients-1> next to data-dir")
    return int(meta["site"])


def _label_map(site_classes: list[str], federation: list[str], folder: Path) -> torch.Tensor:
    unknown = [c for c in site_classes if c not in federation]
    if unknown:
        raise DataError(f"{folder}: classes {unknown[:5]} are not among the federation's classes "
                        f"{federation[:20]}: rename or remove those class folders")
    return torch.tensor([federation.index(c) for c in site_classes], dtype=torch.long)


def _image_folder(root: Path, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, federation labels) of an ImageFolder tree."""
    images, site_labels, classes = read_image_folder(root, tuple(info["shape"]))
    return images, _label_map(classes, info["classes"], root)[site_labels]


def _tensor_file(path: Path, info: dict) -> tuple[torch.Tensor, ...]:
    try:
        blob = torch.load(path, weights_only=True)
        parts = [blob[k] for k in ("train_x", "train_y", "test_x", "test_y")]
        labels = _label_map([str(c) for c in blob["classes"]], info["classes"], path)
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is not a fedcls site tensor file ({type(err).__name__}: {err}): "
                        f"write it with python -m fedcls.prepare_sites format=tensor") from None
    return parts[0], labels[parts[1].long()], parts[2], labels[parts[3].long()]


def _split_local(x, y, fraction: float, seed: int):
    """The federation's own local train/test split (data.federated.local_split), seeded."""
    train, test = local_split(np.arange(len(y)), fraction, np.random.default_rng([seed, 0x5E57]))
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return x[train], y[train], x[test], y[test]


def read_site_folder(folder: str | Path, info: dict, cfg: Config) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, test_x, test_y) of a site folder, labels in the federation's order."""
    root = Path(folder).expanduser()
    if (root / TENSOR_FILE).exists():
        parts = _tensor_file(root / TENSOR_FILE, info)
    elif (root / "train").is_dir():
        train = _image_folder(root / "train", info)
        test = _image_folder(root / "test", info) if (root / "test").is_dir() else None
        parts = (*train, *test) if test else _split_local(*train, cfg.data.local_test_fraction, cfg.seed)
    else:
        raise DataError(f"site data folder {root} holds neither {TENSOR_FILE} nor train/<class>/<image>: "
                        f"point the node config's data-dir at such a folder (python -m fedcls.prepare_sites "
                        f"writes them)")
    if tuple(parts[0].shape[1:]) != tuple(info["shape"]):
        raise DataError(f"{root}: images of shape {tuple(parts[0].shape[1:])}, the federation's model "
                        f"expects {tuple(info['shape'])}")
    return parts


def folder_federated_data(folder: str | Path, site: int, info: dict, cfg: Config) -> FederatedData:
    """A site folder as a one-site FederatedData (its images as the pool, train then test, under
    the federation's normalisation), so the simulation's data code serves it unchanged."""
    train_x, train_y, test_x, test_y = read_site_folder(folder, info, cfg)
    pool = Dataset(f"site:{folder}", torch.cat([train_x, test_x]), torch.cat([train_y, test_y]),
                   test_x[:0], test_y[:0], len(info["classes"]), torch.tensor(info["mean"]),
                   torch.tensor(info["std"]), float(info["scale"]), list(info["classes"]))
    n = len(train_y)
    entry = Site(np.arange(n), np.arange(n, n + len(test_y)), float(site_meta(folder).get("noise_std", 0.0)))
    return FederatedData(pool, None, {site: entry}, None, cfg.seed)
