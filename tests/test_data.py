import re
import struct

import numpy as np
import pytest
import torch

from fedcls.config import compose
from fedcls.data.catalog import load_dataset
from fedcls.data.federated import build_federated_data, federated_data, site_tensors
from fedcls.errors import DataError


def _source(cfg) -> tuple:
    """(dataset name, data section) of a composed config: what load_dataset takes."""
    return cfg.dataset, cfg.data


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
    ds = load_dataset(cfg.dataset, cfg.data)
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8
    assert torch.bincount(ds.test_y).tolist() == [100] * 10
    again = load_dataset(*_source(compose(["seed=5"])))  # the split does not move with the training seed
    assert torch.equal(ds.test_y, again.test_y) and torch.equal(ds.test_x, again.test_x)
    x = ds.normalize(ds.train_x[:500])
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2


def test_digits_are_upsampled_to_28x28():
    ds = load_dataset(*_source(compose(["dataset=digits"])))
    assert ds.shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train_y) + len(ds.test_y) == 1797 and ds.train_x.max() > 200


def test_synthetic_shape_follows_config():
    ds = load_dataset(*_source(compose(["dataset=synthetic", "data.synthetic.num_samples=200",
                               "data.synthetic.num_classes=4", "data.synthetic.channels=3",
                               "data.synthetic.image_size=8"])))
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
        load_dataset(cfg.dataset, cfg.data)


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
    from fedcls.data.catalog import load_dataset

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 12, 12), generator=gen, dtype=torch.uint8)
    labels = torch.arange(60) % 3
    names = ["cat", "dog", "eel"]
    write_pngs(tmp_path / "train", images[:45], labels[:45], names)
    write_pngs(tmp_path / "test", images[45:], labels[45:], ["cat", "dog", "eel"])
    cfg = compose(["dataset=imagefolder", f"data.image_folder={tmp_path}", "num_clients=3"])
    ds = load_dataset(cfg.dataset, cfg.data)
    assert ds.class_names == names and ds.shape == (1, 12, 12) and ds.num_classes == 3
    assert torch.equal(ds.train_x, images[:45]) and torch.equal(ds.train_y, labels[:45])  # file-name order
    assert torch.equal(ds.test_x, images[45:]) and torch.equal(ds.test_y, labels[45:])
    resized = load_dataset(*_source(compose(["dataset=imagefolder", f"data.image_folder={tmp_path}", "data.image_size=20"])))
    assert resized.shape == (1, 20, 20)
    import shutil

    shutil.rmtree(tmp_path / "test")  # without test/: data.test_fraction is held out
    held = load_dataset(cfg.dataset, cfg.data)
    assert len(held.test_y) == 9 and len(held.train_y) == 36


def test_imagefolder_without_a_folder_says_what_to_do(tmp_path):
    from fedcls.config import compose
    from fedcls.errors import DataError

    with pytest.raises(DataError, match="needs data.image_folder"):
        compose(["dataset=imagefolder"])
    with pytest.raises(DataError, match="has no train/ folder"):
        compose(["dataset=imagefolder", f"data.image_folder={tmp_path}"])


def test_normalize_none_feeds_plain_pixels_in_0_1_everywhere():
    """data.normalize=none (NIID-Bench's MNIST: ToTensor only): every input is stored/255."""
    cfg = compose(["scenario=noise_0.1", "num_clients=4", "data.normalize=none"])
    data = build_federated_data(cfg)
    ds, site = data.dataset, data.sites[3]
    assert ds.mean.tolist() == [0.0] and ds.std.tolist() == [1.0]  # what federation_info sends
    tensors = site_tensors(data, 3, torch.device("cpu"))
    raw = ds.train_x[torch.as_tensor(site.train_idx)]  # the stored uint8 pixels of the source
    assert torch.equal(tensors.train_x, raw.float() / 255)
    assert tensors.train_x.min() >= 0 and tensors.train_x.max() <= 1 and tensors.train_x.max() > 0.99
    assert torch.equal(ds.normalize(ds.test_x), ds.test_x.float() / 255)  # the server's global test set
    assert tensors.noise_scale.item() == pytest.approx(0.1)  # sigma in [0, 1] pixel units, unscaled


def test_standardize_gives_the_train_pool_mean_0_and_std_1():
    data = build_federated_data(compose(["num_clients=3"]))  # data.normalize=standardize (default)
    ds = data.dataset
    pixels = ds.train_x.double() / 255  # hand-computed statistics of the train pool
    assert ds.mean.item() == pytest.approx(pixels.mean().item(), abs=1e-7)
    assert ds.std.item() == pytest.approx(pixels.std().item(), abs=1e-7)
    x = ds.normalize(ds.train_x).double()
    assert abs(x.mean().item()) < 1e-5 and x.std().item() == pytest.approx(1.0, abs=1e-5)
    site = site_tensors(data, 0, torch.device("cpu"))
    expect = (ds.train_x[torch.as_tensor(data.sites[0].train_idx)].float() / 255 - ds.mean) / ds.std
    assert torch.allclose(site.train_x, expect, atol=1e-6)


def test_local_test_fraction_zero_puts_every_sample_in_training():
    cfg = compose(["scenario=dirichlet_0.5", "num_clients=5", "data.local_test_fraction=0"])
    data = build_federated_data(cfg)
    for s, (site, part) in enumerate(zip(data.sites, data.partition.indices)):
        assert len(site.test_idx) == 0 and site.train_idx.tolist() == sorted(part.tolist())
        tensors = site_tensors(data, s, torch.device("cpu"))
        assert tensors.test_x.shape == (0, 1, 28, 28) and len(tensors.train_y) == len(part)
    assert sum(len(s.train_idx) for s in data.sites) == 4000  # the whole train pool trains


@pytest.mark.parametrize("args, words", [
    (["data.local_test_fraction=1"], "must be in [0, 1)"),
    (["data.local_test_fraction=-0.1"], "must be in [0, 1)"),
    (["data.local_test_fraction=0", "domain.targets=[2]"], "no labelled test split"),
    (["data.normalize=standardise"], "Did you mean 'standardize'"),
])
def test_bad_preprocessing_settings_name_the_fix(args, words):
    from fedcls.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        compose(args)


def test_a_run_without_local_test_splits_completes_with_no_local_accuracy(monkeypatch, tmp_path):
    """local_test_fraction=0 with fraction_evaluate=1: sites answer with 0 examples, the server
    reports no local accuracy (never 0/0) and the global test accuracy as usual."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose(["num_clients=3", "model=mlp", "local_epochs=1", "rounds=2", "data.local_test_fraction=0",
                   "data.normalize=none", "fraction_evaluate=1", "checkpoint_every=0"])
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(CohortGrid(3, [CohortWorker(per_client=True)]), cfg, federated_data(cfg), recorder)
    assert [r["failures"] for r in recorder.rows] == [[], []]
    assert all(r["clients"] == {} for r in recorder.rows)
    assert recorder.rows[-1]["accuracy"] > 0.5, recorder.rows[-1]


def test_sites_with_no_test_examples_carry_no_local_accuracy():
    from flwr.app import MetricRecord, RecordDict

    from fedcls.apps.federation import aggregate_with_spread

    def reply(acc, n):
        return RecordDict({"metrics": MetricRecord({"accuracy": acc, "loss": 1.0, "num-examples": n})})

    agg = aggregate_with_spread([reply(0.0, 0), reply(0.8, 10), reply(0.6, 30)], "num-examples")
    assert agg["accuracy"] == pytest.approx(0.65)  # (0.8*10 + 0.6*30) / 40; the empty site is left out
    assert (agg["accuracy_min"], agg["accuracy_max"]) == (0.6, 0.8)
    assert dict(aggregate_with_spread([reply(0.0, 0), reply(0.0, 0)], "num-examples")) == {}  # not 0/0


def test_the_per_process_cache_keeps_only_the_most_recently_used():
    from fedcls.caching import BoundedCache

    cache, built = BoundedCache(size=2), []
    for key in ["a", "b", "a", "c", "b"]:
        cache.get_or_build(key, lambda k=key: built.append(k) or k.upper())
    # "a" was used after "b", so "c" evicted "b"; "b" is then built again and evicts "a"
    assert built == ["a", "b", "c", "b"]
    assert list(cache) == ["c", "b"] and cache["b"] == "B"


def test_a_kept_actor_forgets_every_cache_of_an_earlier_command():
    """backend.keep_actors: a new command's first call empties the process's caches (the module's
    own ones too), so data files changed between commands are read again."""
    from fedcls.apps import runtime
    from fedcls.caching import BoundedCache, forget_everything

    mine = BoundedCache(size=2)
    mine.get_or_build("a", lambda: 1)
    runtime._RUNTIMES.get_or_build("a config", lambda: "a runtime")
    forget_everything()
    assert len(mine) == 0 and len(runtime._RUNTIMES) == 0
    assert mine.get_or_build("a", lambda: 2) == 2
