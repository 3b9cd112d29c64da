import struct

import numpy as np
import pytest
import torch

from fedcls.config import compose
from fedcls.data.federated import build_federated_data, site_tensors
from fedcls.data.sources import load_dataset
from fedcls.errors import DataError


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file as torchvision's MNIST reads it (big-endian dims, ubyte data)."""
    magic = 0x0800 + array.ndim
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def mnist_fixture(root, folder="MNIST", n_train=60, n_test=20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist5k_is_split_stratified_and_fixed():
    cfg = compose([])
    ds = load_dataset(cfg)
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    again = load_dataset(compose(["seed=5"]))  # the split does not move with the training seed
    assert torch.equal(ds.test_y, again.test_y) and torch.equal(ds.test_x, again.test_x)
    x = ds.normalize(ds.train_x[:500])
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2


def test_digits_are_upsampled_to_28x28():
    ds = load_dataset(compose(["dataset=digits"]))
    assert ds.shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train_y) + len(ds.test_y) == 1797 and ds.train_x.max() > 200


def test_synthetic_shape_follows_config():
    ds = load_dataset(compose(["dataset=synthetic", "data.synthetic.num_samples=200",
                               "data.synthetic.num_classes=4", "data.synthetic.channels=3",
                               "data.synthetic.image_size=8"]))
    assert ds.shape == (3, 8, 8) and ds.num_classes == 4 and len(ds.train_y) == 160


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_format_from_data_root(tmp_path, name, folder):
    mnist_fixture(tmp_path, folder)
    cfg = compose([f"dataset={name}", f"data.root={tmp_path}", "data.download=false", "num_clients=3"])
    data = build_federated_data(cfg)
    assert data.dataset.shape == (1, 28, 28)
    assert len(data.dataset.train_y) == 60 and len(data.dataset.test_y) == 20
    assert sum(len(s.train_idx) + len(s.test_idx) for s in data.sites) == 60


def test_missing_torchvision_data_names_the_expected_path(tmp_path):
    cfg = compose(["dataset=cifar10", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError, match=f"{tmp_path}/cifar-10-batches-py"):
        load_dataset(cfg)


def test_sites_split_their_partition_into_local_train_and_test():
    cfg = compose(["scenario=noise_0.1", "num_clients=4"])
    data = build_federated_data(cfg)
    for site, part in zip(data.sites, data.partition.indices):
        assert sorted(np.concatenate([site.train_idx, site.test_idx]).tolist()) == part.tolist()
        assert len(site.test_idx) == round(0.2 * len(part))
    last = site_tensors(data, 3, torch.device("cpu"))
    assert torch.allclose(last.noise_scale, 0.1 / data.dataset.std)
    assert site_tensors(data, 0, torch.device("cpu")).noise_scale.item() == 0.0


def write_pngs(root, images, labels, names):
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i:04d}.png")


def test_imagefolder_dataset_reads_your_own_images(tmp_path):
    from fedcls.config import compose
    from fedcls.data.sources import load_dataset

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 12, 12), generator=gen, dtype=torch.uint8)
    labels = torch.arange(60) % 3
    names = ["cat", "dog", "eel"]
    write_pngs(tmp_path / "train", images[:45], labels[:45], names)
    write_pngs(tmp_path / "test", images[45:], labels[45:], ["cat", "dog", "eel"])
    cfg = compose(["dataset=imagefolder", f"data.image_folder={tmp_path}", "num_clients=3"])
    ds = load_dataset(cfg)
    assert ds.class_names == names and ds.shape == (1, 12, 12) and ds.num_classes == 3
    assert torch.equal(ds.train_x, images[:45]) and torch.equal(ds.train_y, labels[:45])  # file-name order
    assert torch.equal(ds.test_x, images[45:]) and torch.equal(ds.test_y, labels[45:])
    resized = load_dataset(compose(["dataset=imagefolder", f"data.image_folder={tmp_path}", "data.image_size=20"]))
    assert resized.shape == (1, 20, 20)
    import shutil

    shutil.rmtree(tmp_path / "test")  # without test/: data.test_fraction is held out
    held = load_dataset(cfg)
    assert len(held.test_y) == 9 and len(held.train_y) == 36


def test_imagefolder_without_a_folder_says_what_to_do(tmp_path):
    from fedcls.config import compose
    from fedcls.errors import DataError

    with pytest.raises(DataError, match="needs data.image_folder"):
        compose(["dataset=imagefolder"])
    with pytest.raises(DataError, match="has no train/ folder"):
        compose(["dataset=imagefolder", f"data.image_folder={tmp_path}"])
