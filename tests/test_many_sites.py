"""Many sites on one machine (benchmarks/many_sites.py measures 10,000): nothing is asked of or
built for a site that is not sampled, per-site caches stay bounded, and Flower's simulation engine
hands out messages in one pass over them rather than one per node."""

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedcls.config import compose
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=400", "num_clients=20", "model=mlp", "local_epochs=1",
         "rounds=2", "fraction_train=0.1", "fraction_evaluate=0.1", "save_model=false", "checkpoint_every=0"]


@pytest.fixture
def flower_patched(monkeypatch):
    """fedcls.engine.flower_patches.serve_many_nodes for this test only (Flower's functions back after)."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from fedcls.engine import flower_patches

    monkeypatch.setattr(vce_api, "_register_nodes", vce_api._register_nodes)
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    monkeypatch.setattr(vce_api, "Queue", vce_api.Queue)
    monkeypatch.setattr(InMemoryGrid, "simulated_sites", None, raising=False)  # deleted again after the test
    for name in ("store_message_ins", "store_message_res"):
        monkeypatch.setattr(InMemoryLinkState, name, getattr(InMemoryLinkState, name))
    monkeypatch.setattr(InMemoryLinkState, "_fedcls_wakes", False, raising=False)
    flower_patches.serve_many_nodes()
    return vce_api


def simulation_grid(vce_api, nodes: int):
    """Flower's simulation link state and grid with `nodes` registered as run_simulation does."""
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(1)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    factory.state().run_ids[1] = RunRecord(run=run)
    factory.state().task_store[1] = Task(task_id=1, run_id=1)
    grid = InMemoryGrid(factory)
    grid.set_run(run)
    return grid, vce_api._register_nodes(num_nodes=nodes, state_factory=factory)


class Progress:
    def __init__(self):
        self.lines = []

    def phase(self, name, text):
        self.lines.append(f"{name} {text}")

    def stage(self, *args):
        self.lines.append(f"stage {args}")


def test_a_simulations_grid_names_each_nodes_site_so_no_node_is_asked(flower_patched, monkeypatch):
    from types import SimpleNamespace

    from fedcls.apps import federation

    grid, mapping = simulation_grid(flower_patched, 50)
    assert grid.simulated_sites() == mapping and sorted(mapping.values()) == list(range(50))
    monkeypatch.setattr(grid, "send_and_receive", lambda *a, **k: pytest.fail("a roll call was sent"))
    recorder = SimpleNamespace(progress=Progress())
    site_of_node, declared = federation.roster(grid, compose([*SMALL, "num_clients=50"]), {}, recorder)
    assert site_of_node == mapping and declared is None  # the server's own partition bounds the claims
    assert recorder.progress.lines == ["sites 50 simulated sites, each node's site known "
                                       "(no roll call: round 1 begins)"]
    plain = SimpleNamespace(get_node_ids=grid.get_node_ids)  # a deployment's grid: the roll call
    assert federation.known_sites(plain) is None


def test_the_engines_queues_wake_often_enough_to_see_its_stop_event_promptly(flower_patched, monkeypatch):
    """Flower's workers wait on queue.get(timeout=1.0) between checks of the stop event: each run
    ended up to a second after its ServerApp. The engine's queues now cap that wait."""
    import queue

    from fedcls.engine.flower_patches import STOP_POLL_S, PromptQueue

    assert flower_patched.Queue is PromptQueue
    waits = []
    plain_get = queue.Queue.get
    monkeypatch.setattr(queue.Queue, "get", lambda self, block=True, timeout=None: (
        waits.append(timeout), plain_get(self, block, timeout))[1])
    q = flower_patched.Queue()
    q.put("message")
    assert q.get(timeout=1.0) == "message"  # what is there comes at once
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)  # an empty queue gives up after STOP_POLL_S, as a timeout does
    assert waits == [STOP_POLL_S, STOP_POLL_S] and STOP_POLL_S < 0.1


def test_pending_messages_go_out_one_per_node_per_pass_in_node_order(flower_patched, monkeypatch):
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedcls.engine.flower_patches import undelivered_messages

    grid, mapping = simulation_grid(flower_patched, 30)
    nodes = list(mapping)  # registration order = site order
    identity(monkeypatch)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)  # sent by the ServerApp
    sent = [Message(RecordDict({"c": ConfigRecord({"i": i})}), dst_node_id=node, message_type="query")
            for i, node in enumerate([nodes[7], nodes[2], nodes[7], nodes[29]])]
    grid.push_messages(sent)
    order = {node: i for i, node in enumerate(mapping)}
    first = undelivered_messages(grid.state, order)
    assert [m.content["c"]["i"] for m in first] == [1, 0, 3]  # sites 2, 7, 29: one each, site order
    assert all(m.metadata.delivered_at for m in first)
    assert [m.content["c"]["i"] for m in undelivered_messages(grid.state, order)] == [2]  # site 7's second
    assert undelivered_messages(grid.state, order) == []
    assert undelivered_messages(grid.state, {}) == []  # another engine's nodes: not this one's to deliver


def test_messages_pass_on_when_stored_not_at_the_next_poll(flower_patched, monkeypatch):
    """The engine hands out an instruction, and the ServerApp pulls a reply, as soon as it is
    stored: with both polls set to a minute, a round trip still takes well under one."""
    import queue
    import threading
    import time
    import uuid

    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedcls.apps import federation
    from fedcls.engine import flower_patches

    monkeypatch.setattr(flower_patches, "DELIVERY_POLL_S", 60.0)
    monkeypatch.setattr(federation, "PULL_INTERVAL_S", 60.0)
    grid, mapping = simulation_grid(flower_patched, 3)
    identity(monkeypatch)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    to_actors, stop = queue.Queue(), threading.Event()
    delivery = threading.Thread(target=flower_patched.add_messages_to_queue,
                                args=(grid.state, to_actors, mapping, stop), daemon=True)
    delivery.start()

    def site():  # what Flower's worker does with an instruction: reply, stored in the link state
        instruction = to_actors.get(timeout=30)
        reply = Message(RecordDict({"m": ConfigRecord({"ok": 1})}), reply_to=instruction)
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        grid.state.store_message_res(reply)

    threading.Thread(target=site, daemon=True).start()
    started = time.monotonic()
    time.sleep(0.2)  # the delivery thread is in its (minute-long) wait before anything is stored
    node = next(iter(mapping))
    replies = federation.push_and_pull(grid, [Message(RecordDict({}), dst_node_id=node, message_type="query")],
                                       timeout=50)
    stop.set()
    assert [m.content["m"]["ok"] for m in replies] == [1]
    assert time.monotonic() - started < 30


def test_a_cohort_worker_keeps_nothing_for_a_site_but_its_state(monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose(SMALL)
    worker = CohortWorker()
    asked = []

    class Listening(CohortGrid):
        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            asked.append({m.metadata.dst_node_id - 1 for m in messages})
            return super().send_and_receive(messages, timeout)

    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(Listening(cfg.num_clients, [worker], echo=lambda line: None), cfg, federated_data(cfg), recorder)
    trained = {site for row in recorder.rows for site, _ in row["trained"]}
    assert len(asked) == 4 and all(len(sites) == 2 for sites in asked)  # no roll call: 2 of 20 per exchange
    assert set(worker.contexts) == trained  # sites that only evaluated keep no Context
    assert all(worker.contexts[site].state for site in trained)  # those that trained: their participation count


def test_a_runtime_keeps_the_tensors_of_a_bounded_number_of_sites(monkeypatch):
    from fedcls.apps import runtime
    from fedcls.data.federated import site_tensors

    monkeypatch.setattr(runtime, "SITES_KEPT", 3)
    cfg = compose(SMALL)
    built = []
    monkeypatch.setattr(runtime, "site_tensors", lambda data, site, device: built.append(site) or site_tensors(data, site, device))
    rt = runtime._build_runtime(cfg, torch.device("cpu"), None, None)
    first = rt.site(0)
    for site in range(1, 10):
        rt.site(site)
    rt.site(9)
    assert list(rt.sites) == [7, 8, 9] and built == list(range(10))  # the last three used; 9 built once
    again = rt.site(0)  # built again, the same tensors
    assert built[-1] == 0 and again is not first
    for name in ("train_x", "train_y", "test_x", "test_y", "noise_scale"):
        assert torch.equal(getattr(again, name), getattr(first, name))
