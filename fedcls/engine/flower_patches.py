"""Fixes to Flower internals, isolated here. Written against flwr 1.42 (FLOWER_VERSION): check
them again when upgrading Flower; each says what it works around.
"""

from __future__ import annotations

from queue import Queue

FLOWER_VERSION = "1.42"


def replace_dead_actors() -> None:
    """Make Flower's actor pool replace an actor that died (OOM killer, ray.kill) with a new one.

    Flower 1.42's BasicActorPool puts the actor of a failed job back into the pool even when the
    actor is dead, and every later message sent to it fails. Here the failing message still
    fails (its client's work is lost for the round), and a fresh actor takes the dead one's place.
    """
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if getattr(BasicActorPool, "_fedcls_replaces_dead", False):
        return
    fetch, put_back = BasicActorPool.fetch_result_and_return_actor_to_pool, BasicActorPool.add_actor_back_to_pool

    def fetch_marking_dead(self, future):
        try:
            return fetch(self, future)
        except ray.exceptions.RayActorError:
            self.__dict__.setdefault("_dead_futures", set()).add(future)
            raise

    def put_back_alive(self, future) -> None:
        if future in self.__dict__.get("_dead_futures", ()):
            self._dead_futures.discard(future)
            self._future_to_actor.pop(future, None)
            self.pool.append(self.create_actor_fn())
            return
        put_back(self, future)

    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_marking_dead
    BasicActorPool.add_actor_back_to_pool = put_back_alive
    BasicActorPool._fedcls_replaces_dead = True


class RayWithoutShutdown:
    """The ray module, except that shutdown() does nothing: Flower's Ray backend calls
    ray.shutdown() after every simulation, and a sweep runs many on one Ray instance
    (fedcls.engine.simulation.shared_ray)."""

    def __init__(self, ray_module):
        self._ray = ray_module

    def __getattr__(self, name):
        return getattr(self._ray, name)

    def shutdown(self, *args, **kwargs) -> None:
        return None


def serve_many_nodes() -> None:
    """Make Flower's simulation engine cheap at thousands of nodes (10,000 sites, 1% sampled):
    ``deliver_in_one_pass`` and ``name_simulated_sites``; prompt to stop (``stop_promptly``) and
    to pass messages on (``wake_on_messages``). Call before ``run_simulation``."""
    deliver_in_one_pass()
    name_simulated_sites()
    stop_promptly()
    wake_on_messages()


STOP_POLL_S = 0.02


class PromptQueue(Queue):
    """A Queue whose timed ``get`` waits at most STOP_POLL_S (then raises Empty, as a timeout does)."""

    def get(self, block: bool = True, timeout: float | None = None):
        return super().get(block, min(timeout, STOP_POLL_S) if timeout is not None else None)


def stop_promptly() -> None:
    """Flower 1.42's simulation engine ends a run only when its worker and injector threads wake
    from ``queue.get(timeout=1.0)`` and see the stop event: up to a second after the ServerApp
    returned, in every run of a sweep. Its queues (``vce_api.Queue``) wake every STOP_POLL_S
    instead; an idle wake-up is one lock and a check of the event."""
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.Queue = PromptQueue


def deliver_in_one_pass() -> None:
    """Hand the simulation's pending messages to its workers in one pass over the stored messages.

    Flower 1.42's ``vce_api.add_messages_to_queue`` polls every 0.1 s, and each poll asks the
    link state once per node (``get_message_ins(node_id, limit=1)``), which scans every stored
    message and checks each one's expiry: N nodes x M messages per poll. At 10,000 nodes that is
    10,000 scans every 0.1 s while idle and 10^8 checks per poll for a 10,000-message broadcast;
    the driver spends its time there. Here one poll checks each stored message once and takes,
    as Flower does, at most one undelivered message per node, queued in the nodes' order; and a
    poll runs as soon as the ServerApp stores a message (``wake_on_messages``), not up to 0.1 s
    later. Other link states (SQL) keep Flower's own loop.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    from fedcls.apps.federation import arrived

    if getattr(vce_api.add_messages_to_queue, "_fedcls_one_pass", False):
        return
    flowers = vce_api.add_messages_to_queue

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:
        if not isinstance(state, InMemoryLinkState):
            return flowers(state, queue, nodes_mapping, f_stop)
        order = {node: i for i, node in enumerate(nodes_mapping)}
        pushed = arrived(state, "instructions")
        while not f_stop.is_set():
            pushed.clear()  # before the pass: a message stored during it wakes the next one at once
            for msg in undelivered_messages(state, order):
                queue.put(msg)
            pushed.wait(DELIVERY_POLL_S)

    add_messages_to_queue._fedcls_one_pass = True  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = add_messages_to_queue


DELIVERY_POLL_S = 0.1  # Flower's; a stored message wakes the delivery at once (wake_on_messages)


def wake_on_messages() -> None:
    """Pass a simulation's messages on when they are stored, not at the next poll.

    Flower 1.42's engine hands the ServerApp's messages to the client actors on a 0.1 s poll,
    and the ServerApp pulls the replies on a poll of its own (fedcls.apps.federation.push_and_pull,
    0.1 s): on average ~0.1 s lost per round trip, six round trips in a 3-round run. Here the
    InMemoryLinkState sets an event (``arrived``) when it stores an instruction or a reply, and
    both polls wait on it instead of sleeping.
    """
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    from fedcls.apps.federation import arrived

    if getattr(InMemoryLinkState, "_fedcls_wakes", False):
        return
    store_instruction, store_reply = InMemoryLinkState.store_message_ins, InMemoryLinkState.store_message_res

    def store_message_ins(self, message):
        stored = store_instruction(self, message)
        arrived(self, "instructions").set()
        return stored

    def store_message_res(self, message):
        stored = store_reply(self, message)
        arrived(self, "replies").set()
        return stored

    InMemoryLinkState.store_message_ins = store_message_ins
    InMemoryLinkState.store_message_res = store_message_res
    InMemoryLinkState._fedcls_wakes = True


def undelivered_messages(state, order: dict[int, int]) -> list:
    """The first undelivered message of each node in `order` ({node id: rank}) held by an
    InMemoryLinkState, in the nodes' rank, marked delivered (as ``get_message_ins`` marks them);
    expired messages are dropped as ``get_message_ins`` drops them."""
    from flwr.supercore.date import now

    first: dict[int, object] = {}
    with state.lock:
        if not state.message_ins_store:
            return []
        state._check_stored_messages(set(state.message_ins_store))  # deletes the expired ones
        for msg in state.message_ins_store.values():
            node = msg.metadata.dst_node_id
            if node in order and node not in first and msg.metadata.delivered_at == "":
                first[node] = msg
        delivered_at = now().isoformat()
        for msg in first.values():
            msg.metadata.delivered_at = delivered_at
    return [first[node] for node in sorted(first, key=order.__getitem__)]


SITES_ATTR = "_fedcls_site_of_node"  # on the InMemoryLinkState: {node id: partition id}, None while registering


def name_simulated_sites() -> None:
    """Let the round loop know which site each simulated node serves without asking every node
    (the roll call of fedcls.apps.federation.discover_sites: 10,000 query messages at 10,000 sites).

    Flower's simulation registers its nodes in ``vce_api._register_nodes``, which returns the
    mapping {node id: partition id} that becomes each node's ``partition-id`` (the site its
    ClientApp serves, fedcls.apps.client_app.site_id). Here that mapping is kept on the link
    state, and ``InMemoryGrid.simulated_sites()`` returns it to the ServerApp.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    if getattr(InMemoryGrid, "simulated_sites", None) is not None:
        return
    register = vce_api._register_nodes

    def register_nodes(num_nodes, state_factory):
        state = state_factory.state()
        setattr(state, SITES_ATTR, None)  # registering: nodes come online before the mapping returns
        mapping = register(num_nodes=num_nodes, state_factory=state_factory)
        setattr(state, SITES_ATTR, dict(mapping))
        return mapping

    vce_api._register_nodes = register_nodes
    InMemoryGrid.simulated_sites = _simulated_sites


def _simulated_sites(grid, wait_s: float = 60.0) -> dict[int, int] | None:
    """{node id: site} of a Flower simulation's nodes (None: not nodes this simulation registered)."""
    import time

    deadline = time.monotonic() + wait_s
    while hasattr(grid.state, SITES_ATTR) and getattr(grid.state, SITES_ATTR) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return getattr(grid.state, SITES_ATTR, None)
