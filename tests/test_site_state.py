"""Client state on the site's disk survives a SuperNode restart (a fresh, empty context)."""


import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcls.algorithms.models import build_model
from fedcls.apps.client_app import train
from fedcls.apps.payload import CONFIG_KEY, Payload
from fedcls.config import compose
from fedcls.data.federated import federated_data
from strategy_helpers import identity

ARGS = ["strategy=scaffold", "dataset=synthetic", "data.synthetic.num_samples=300", "model=mlp",
        "num_clients=2", "local_epochs=1"]


def train_message(cfg, rnd: int) -> Message:
    ds = federated_data(cfg).dataset
    weights = build_model(cfg.model, ds.shape, ds.num_classes).state_dict()
    config = ConfigRecord({CONFIG_KEY: Payload(cfg).to_json(), "server-round": rnd})
    return Message(RecordDict({"arrays": ArrayRecord(weights), "config": config}), dst_node_id=1,
                   message_type="train")


def context(tmp_path, state_dir: bool = True) -> Context:
    node_config = {"partition-id": 1, **({"state-dir": str(tmp_path / "site")} if state_dir else {})}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_restarted_site_continues_from_the_state_on_its_disk(monkeypatch, tmp_path):
    identity(monkeypatch)
    cfg = compose(ARGS)
    first = context(tmp_path)
    reply = train(train_message(cfg, 1), first)
    assert reply.content["metrics"]["participations"] == 1
    saved = torch.load(tmp_path / "site" / "site-1.pt", weights_only=True)
    assert set(saved) >= {"scaffold", "fedcls"}  # SCAFFOLD's c_i and the counter
    restarted = context(tmp_path)  # a new SuperNode process: empty context.state
    reply = train(train_message(cfg, 2), restarted)
    assert reply.content["metrics"]["participations"] == 2
    ci = restarted.state["fedcls.scaffold"].to_torch_state_dict()
    assert all(torch.isfinite(v).all() for v in ci.values())
    # without a state dir nothing is written and a fresh context starts over
    plain = context(tmp_path / "other", state_dir=False)
    assert train(train_message(cfg, 3), plain).content["metrics"]["participations"] == 1
    assert not (tmp_path / "other").exists()


def test_one_save_serves_the_context_the_state_dir_and_the_checkpoint(tmp_path):
    from fedcls.apps import client_state

    saved = {"dir": str(tmp_path / "run"), "upto": 2}  # the payload's client_state: last checkpoint round 2
    live = context(tmp_path)
    for rnd in (1, 2, 3):
        client_state.save(live, 1, {"c": {"v": torch.tensor([float(rnd)])}}, saved, rnd)
    assert client_state.load(live, 1, saved)["c"]["v"].item() == 3.0
    # round 1's file is dropped: no checkpoint can need it; round 2's is the checkpoint's
    assert sorted(p.name for p in (tmp_path / "run" / "site-1").iterdir()) == ["round-2.pt", "round-3.pt"]
    # a new process resuming the simulation (empty context, no state-dir): the checkpointed round 2
    assert client_state.load(context(tmp_path / "elsewhere", state_dir=False), 1, saved)["c"]["v"].item() == 2.0
    # a restarted SuperNode (empty context, its state-dir): its newest state, round 3
    assert client_state.load(context(tmp_path), 1, saved)["c"]["v"].item() == 3.0
