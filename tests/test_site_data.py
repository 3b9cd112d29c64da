"""A deployed site's own data folder (ImageFolder or tensor file) gives the ClientApp the same
tensors as the simulated share it was prepared from; bad folders get a clear message."""

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcls.algorithms.models import build_model
from fedcls.apps.client_app import site_id, train
from fedcls.apps.payload import CONFIG_KEY, Payload
from fedcls.config import compose
from fedcls.data.federated import federated_data, site_tensors
from fedcls.data.site_folders import federation_info, folder_federated_data
from fedcls.deploy.prepare_sites import main as prepare_main
from fedcls.deploy.prepare_sites import prepare
from fedcls.errors import DataError
from strategy_helpers import identity

ARGS = ["scenario=dirichlet_0.5", "num_clients=3", "model=mlp", "local_epochs=1"]


def tensors_of_folder(cfg, folder, site):
    info = federation_info(federated_data(cfg).dataset)
    return site_tensors(folder_federated_data(folder, site, info, cfg), site, torch.device("cpu"))


@pytest.mark.parametrize("fmt", ["imagefolder", "tensor"])
def test_a_prepared_site_folder_holds_exactly_the_simulated_share(tmp_path, fmt):
    cfg = compose(ARGS)
    folders = prepare(cfg, tmp_path, fmt)
    assert [f.name for f in folders] == ["site-0", "site-1", "site-2"]
    for s in (0, 2):
        simulated = site_tensors(federated_data(cfg), s, torch.device("cpu"))
        deployed = tensors_of_folder(cfg, folders[s], s)
        for key in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(simulated, key), getattr(deployed, key)), key


@pytest.mark.parametrize("fmt", ["imagefolder", "tensor"])
def test_plain_pixels_and_no_local_test_split_deploy_as_simulated(tmp_path, fmt):
    """data.normalize=none and data.local_test_fraction=0: the server's federation_info carries
    mean 0 / std 1, so a deployed site feeds the same [0, 1] pixels as the simulation."""
    cfg = compose([*ARGS, "data.normalize=none", "data.local_test_fraction=0"])
    folders = prepare(cfg, tmp_path, fmt)
    assert json.loads((folders[1] / "site.json").read_text())["test"] == 0
    simulated = site_tensors(federated_data(cfg), 1, torch.device("cpu"))
    deployed = tensors_of_folder(cfg, folders[1], 1)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(simulated, key), getattr(deployed, key)), key
    assert len(deployed.test_y) == 0 and 0 <= deployed.train_x.min() and deployed.train_x.max() <= 1
    raw = federated_data(cfg).dataset.train_x[torch.as_tensor(federated_data(cfg).sites[1].train_idx)]
    assert torch.equal(deployed.train_x, raw.float() / 255)


def test_a_site_folder_without_test_images_keeps_all_for_training_at_fraction_0(tmp_path):
    from PIL import Image

    cfg = compose([*ARGS, "data.local_test_fraction=0"])
    (tmp_path / "train" / "4").mkdir(parents=True)
    for i in range(5):
        Image.new("L", (28, 28), 10 * i).save(tmp_path / "train" / "4" / f"{i}.png")
    data = folder_federated_data(tmp_path, 0, federation_info(federated_data(cfg).dataset), cfg)
    assert len(data.sites[0].train_idx) == 5 and len(data.sites[0].test_idx) == 0


def test_a_site_domain_is_baked_into_the_prepared_images(tmp_path):
    cfg = compose([*ARGS, "domain.sites=[identity,contrast:0.5,invert]"])
    folders = prepare(cfg, tmp_path, "tensor")
    simulated = site_tensors(federated_data(cfg), 1, torch.device("cpu"))
    deployed = tensors_of_folder(cfg, folders[1], 1)
    assert torch.equal(simulated.train_y, deployed.train_y)
    step = 1 / 255 / federated_data(cfg).dataset.std.item()  # one grey level in model units
    assert (simulated.train_x - deployed.train_x).abs().max() <= 0.51 * step


def test_class_folders_map_onto_the_federation_classes_by_name(tmp_path):
    from PIL import Image

    cfg = compose(ARGS)
    for name, value in (("7", 200), ("3", 50)):  # a site with two classes, not in label order
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (14, 14), value).save(tmp_path / "train" / name / f"{i}.png")  # resized to 28x28
    data = folder_federated_data(tmp_path, 5, federation_info(federated_data(cfg).dataset), cfg)
    x, y = data.dataset.train_x, data.dataset.train_y
    assert x.shape == (8, 1, 28, 28) and sorted(y.tolist()) == [3] * 4 + [7] * 4
    assert (x[y == 7] == 200).all() and (x[y == 3] == 50).all()
    assert len(data.sites[5].test_idx) == round(8 * cfg.data.local_test_fraction)


def test_bad_site_folders_say_what_to_fix(tmp_path):
    cfg = compose(ARGS)
    info = federation_info(federated_data(cfg).dataset)
    with pytest.raises(DataError, match="neither data.pt nor train"):
        folder_federated_data(tmp_path, 0, info, cfg)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "train" / "cat" / "0.png")
    with pytest.raises(DataError, match=r"classes \['cat'\] are not among"):
        folder_federated_data(tmp_path, 0, info, cfg)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.pt").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="not a fedcls site tensor file"):
        folder_federated_data(tmp_path / "other", 0, info, cfg)


def test_prepare_sites_cli_rejects_bad_input(tmp_path, capsys):
    assert prepare_main(["scenario=iid"]) == 2
    assert "out=<folder>" in capsys.readouterr().err
    assert prepare_main([f"out={tmp_path}", "format=zip"]) == 2
    assert prepare_main([f"out={tmp_path}", "scenario=nope"]) == 2


def test_the_client_app_trains_on_the_folder_its_node_config_names(monkeypatch, tmp_path):
    identity(monkeypatch)
    cfg = compose(ARGS)
    folders = prepare(cfg, tmp_path, "tensor")
    node = Context(run_id=1, node_id=9, node_config={"data-dir": str(folders[2])}, state=RecordDict(),
                   run_config={})
    assert site_id(node) == 2  # from the folder's site.json
    ds = federated_data(cfg).dataset
    payload = Payload(cfg, federation_info(ds)).to_json()
    weights = ArrayRecord(build_model(cfg.model, ds.shape, ds.num_classes).state_dict())
    msg = Message(RecordDict({"arrays": weights, "config": ConfigRecord({CONFIG_KEY: payload, "server-round": 1})}),
                  dst_node_id=9, message_type="train")
    reply = train(msg, node)
    assert reply.content["metrics"]["site"] == 2
    assert reply.content["metrics"]["num-examples"] == len(federated_data(cfg).sites[2].train_idx)
