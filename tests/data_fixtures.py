"""Small datasets written in their libraries' own on-disk formats (no network): MedMNIST's .npz
and a Hugging Face dataset as parquet files. Each class draws a bright square at its own place on
noise, so a model learns them within a round or two."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def class_images(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x size x size (x 3 when channels is 3) images, one square position per class."""
    images = rng.integers(0, 60, size=(len(labels), size, size, channels), dtype=np.uint8)
    side = size // 4
    for i, c in enumerate(labels):
        row, col = divmod(int(c) % 16, 4)
        images[i, row * side:(row + 1) * side, col * side:(col + 1) * side] = 200 + 5 * (int(c) // 16)
    return images[..., 0] if channels == 1 else images


def write_medmnist(root: Path, flag: str = "pathmnist", counts=(300, 40, 120), size: int = 28,
                   classes: int = 9, channels: int = 3, seed: int = 0) -> Path:
    """<root>/<flag>[_<size>].npz in MedMNIST's layout: {train,val,test}_{images,labels}, labels N x 1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = np.arange(n) % classes
        arrays[f"{split}_images"] = class_images(labels, size, channels, rng)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


HOSPITALS = ("north", "south", "east", "west")


def write_hf_parquet(folder: Path, counts=(240, 80), classes: int = 4, size: int = 16, seed: int = 0) -> Path:
    """A Hugging Face dataset as parquet files (data/train-*.parquet, data/test-*.parquet, the
    layout load_dataset reads by split name): an Image column, a ClassLabel, a hospital per row
    (uneven label mixes per hospital) and a unique id."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{c}" for c in range(classes)]),
        "hospital": datasets.Value("string"), "uid": datasets.Value("int64")})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in zip(("train", "test"), counts):
        labels = rng.integers(0, classes, size=n)
        hospital = [HOSPITALS[(int(c) + int(rng.integers(0, 2))) % len(HOSPITALS)] for c in labels]
        images = [Image.fromarray(img) for img in class_images(labels, size, 1, rng)]
        table = datasets.Dataset.from_dict({"image": images, "label": labels.tolist(), "hospital": hospital,
                                            "uid": list(range(start, start + n))}, features=features)
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        start += n
    return folder
