"""Features are plug-ins with two halves: the registry (fedcls.apps.features) decides which run,
and a new feature reaches the ClientApp and the round loop without either naming it."""


import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcls.algorithms.feature import ClientHalf, Extension, Feature
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import Hook
from fedcls.apps import client_app, features
from fedcls.apps.payload import CONFIG_KEY, Payload
from fedcls.config import compose
from fedcls.data.federated import federated_data
from strategy_helpers import identity
from test_architecture import import_graph

ARGS = ["dataset=synthetic", "data.synthetic.num_samples=300", "model=mlp", "num_clients=2", "local_epochs=1"]
FEATURE_MODULES = ("fedcls.algorithms.coral", "fedcls.algorithms.coral_align", "fedcls.algorithms.continual",
                   "fedcls.algorithms.domain_eval", "fedcls.apps.faults")


def names(halves) -> list[str]:
    return [type(h).__name__ for h in halves]


def test_the_registry_turns_on_the_halves_a_config_asks_for():
    plain = compose(ARGS)
    assert features.client_halves(plain) == [] and features.extensions_for(plain, federated_data(plain)) == []
    cfg = compose(["scenario=digits_shift", "coral.enabled=true", "coral.align=recolour"])
    assert names(features.extensions_for(cfg, federated_data(cfg))) == ["DomainEvaluation", "CoralServer", "RecolourServer"]
    assert names(features.client_halves(cfg)) == ["CoralClient", "RecolourClient"]
    cfg = compose(["scenario=continual_classes", "faults.nan_prob=0.5"])
    assert names(features.client_halves(cfg)) == ["ContinualClient", "FaultInjection"]
    assert names(features.extensions_for(cfg, federated_data(cfg))) == ["ContinualServer", "FaultDelivery"]


def test_the_client_app_names_no_feature():
    imported = import_graph()["fedcls.apps.client_app"]
    assert not [m for m in imported if m.startswith(FEATURE_MODULES)]


class Marker(Hook):
    def __init__(self, log: list):
        self.log = log

    def before_training(self, ctx) -> None:
        self.log.append(("trains", len(ctx.data.train_y)))


class ZeroBias(ClientHalf):
    """A toy feature: a hook before the strategy's, and the bias zeroed in what the site sends."""

    def __init__(self, log: list):
        self.log = log

    def hooks_first(self, job, inbox: dict) -> list:
        return [Marker(self.log)]

    def outgoing(self, job, weights: dict, metrics: dict) -> tuple[dict, dict]:
        return {k: torch.zeros_like(v) if k.endswith("bias") else v for k, v in weights.items()}, metrics


def test_a_new_feature_plugs_into_the_client_app_without_touching_it(monkeypatch):
    identity(monkeypatch)
    log: list = []
    toy = Feature("toy", lambda cfg: True, server=lambda cfg, data: Extension(), client=lambda cfg: ZeroBias(log))
    monkeypatch.setattr(features, "FEATURES", (*features.FEATURES, toy))
    cfg = compose(ARGS)
    ds = federated_data(cfg).dataset
    weights = build_model(cfg.model, ds.shape, ds.num_classes).state_dict()
    msg = Message(RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(
        {CONFIG_KEY: Payload(cfg).to_json(), "server-round": 1})}), dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = client_app.train(msg, context)
    sent = reply.content["arrays"].to_torch_state_dict()
    assert log == [("trains", int(reply.content["metrics"]["num-examples"]))]
    assert all(not v.any() for k, v in sent.items() if k.endswith("bias"))
    assert any(v.any() for k, v in sent.items() if k.endswith("weight"))
    assert names(features.extensions_for(cfg, federated_data(cfg))) == ["Extension"]


def test_the_faults_server_half_withholds_drops_and_leaves_late_stragglers_out(monkeypatch):
    """Drops and stragglers are the faults feature's server half, drawn like the client half's."""
    import time

    from fedcls.apps.faults import FaultDelivery, fault_of

    identity(monkeypatch)
    cfg = compose([*ARGS, "num_clients=8", "faults.drop_prob=0.3", "faults.straggler_prob=0.3",
                   "faults.straggler_delay=5", "faults.round_timeout=1"])
    half = FaultDelivery(cfg)
    site_of_node = {100 + s: s for s in range(8)}
    messages = [Message(RecordDict(), dst_node_id=node, message_type="train") for node in site_of_node]
    kinds = {s: fault_of(cfg, 3, s) for s in range(8)}
    assert {"drop", "straggler", None} <= set(kinds.values())  # this seed draws every case
    sent, dropped = half.withhold(3, messages, site_of_node)
    assert dropped == [s for s, k in kinds.items() if k == "drop"]
    assert [site_of_node[m.metadata.dst_node_id] for m in sent] == [s for s, k in kinds.items() if k != "drop"]
    replies = [Message(RecordDict(), reply_to=msg) for msg in sent]
    arrived = half.arrived(3, replies, site_of_node, time.perf_counter() - 1.0)  # the deadline has passed
    assert [site_of_node[m.metadata.src_node_id] for m in arrived] == [s for s, k in kinds.items() if k is None]
