"""Fixes to Flower internals, isolated here. Written against flwr 1.42 (FLOWER_VERSION): check
them again when upgrading Flower; each says what it works around.
"""

from __future__ import annotations

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
