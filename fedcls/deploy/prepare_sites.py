"""``python -m fedcls.prepare_sites out=<folder> [format=imagefolder|tensor] [key=value ...]``:
write each site of a fedcls scenario as a site data folder (see fedcls.data.site_folders), to rehearse a
deployment on one machine: start one SuperNode per folder with ``--node-config
'data-dir="<folder>/site-<k>"'``.

    python -m fedcls.prepare_sites out=sites scenario=dirichlet_0.1 num_clients=3
    python -m fedcls.prepare_sites out=sites scenario=hospitals format=tensor

Each site gets its train and local test share, with its device domain (``domain.sites``) baked
into the images, its feature-noise level in site.json, and the federation's class list in
classes.txt. The coordinator then runs ``flwr run`` with the same scenario and overrides.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fedcls.errors import UserError, run_cli
from fedcls.schema import Config

FORMATS = ("imagefolder", "tensor")


def _stored(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Images in stored units as the dataset stores them (0-255 images back to uint8)."""
    return x.round().clamp(0, 255).to(torch.uint8) if scale == 255.0 else x.float()


def stored_site_images(data, site_id: int) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, test_x, test_y) of a simulated site, as its own camera would store them."""
    from fedcls.data.federated import site_images

    train_x, train_y, test_x, test_y = site_images(data, site_id)
    scale = data.dataset.scale
    return _stored(train_x, scale), train_y, _stored(test_x, scale), test_y


def _write_png_tree(root: Path, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> None:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y.tolist())):
        array = img.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(root / classes[label] / f"{i:05d}.png")


def write_site(folder: Path, site_id: int, parts: tuple, classes: list[str], noise_std: float, fmt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = parts
    if fmt == "tensor":
        torch.save({"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
                    "classes": classes}, folder / "data.pt")
    else:
        if train_x.dtype != torch.uint8:
            raise UserError("format=imagefolder needs 0-255 images; this dataset has floats: use format=tensor")
        _write_png_tree(folder / "train", train_x, train_y, classes)
        _write_png_tree(folder / "test", test_x, test_y, classes)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    (folder / "site.json").write_text(json.dumps({"site": site_id, "noise_std": noise_std,
                                                  "train": len(train_y), "test": len(test_y)}) + "\n")


def prepare(cfg: Config, out: Path, fmt: str) -> list[Path]:
    from fedcls.data.federated import federated_data

    data = federated_data(cfg)
    classes = data.dataset.class_names
    folders = []
    for s in range(cfg.num_clients):
        folder = out / f"site-{s}"
        write_site(folder, s, stored_site_images(data, s), classes, float(data.sites[s].noise_std), fmt)
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, __doc__)


def _main(args: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in args if a.split("=", 1)[0] in ("out", "format"))
    if "out" not in opts:
        raise UserError("name the folder to write: out=<folder> (e.g. out=sites)")
    fmt = opts.get("format", "imagefolder")
    if fmt not in FORMATS:
        raise UserError(f"format={fmt} is unknown; use one of {', '.join(FORMATS)}")
    from fedcls.config import compose

    cfg = compose([a for a in args if a.split("=", 1)[0] not in ("out", "format")])
    folders = prepare(cfg, Path(opts["out"]).expanduser(), fmt)
    print(f"wrote {len(folders)} site folders ({fmt}) under {opts['out']}; start SuperNode k with "
          f"--node-config 'data-dir=\"{folders[0].parent.resolve()}/site-<k>\"'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
