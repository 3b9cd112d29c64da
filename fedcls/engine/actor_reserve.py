"""Client actors that are warm before Flower asks for them, and kept for a sweep's next run.

Flower 1.42's Ray backend creates its actor pool when a simulation starts and terminates it when it
ends; a new actor imports Flower, PyTorch and fedcls on its first message (~5 s of CPU each,
benchmarks/startup.py), so every run of a sweep paid it again. Written by hand (Flower has no hook
for it):

- ``warm(cfg)`` creates the actors Flower's pool would create (same class, resources and count)
  and makes each import the client path and build the run's data and model at once;
- Flower's pool takes its actors from this reserve before creating new ones (``_take``);
- while ``keeping()`` (a sweep), a finished pool gives its idle actors back instead of terminating
  them, so the next run of the grid starts on warm actors.

An actor keeps nothing of a run but per-config caches (fedcls.apps.runtime, fedcls.caching): a
run's numbers on reused actors are those of a fresh run (tests/test_startup.py).
"""

from __future__ import annotations

import json
import threading

_lock = threading.Lock()
_reserve: dict[tuple, list] = {}  # resources key -> idle warm actors
_keep = threading.Event()


def _key(resources: dict) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in resources.items()))


def client_resources(backend) -> dict:
    """A client actor's Ray resources from the config's backend section (Flower's client_resources)."""
    return {"num_cpus": backend.num_cpus, "num_gpus": backend.num_gpus}


def prepare(actor_self, config_json: str) -> bool:
    """Run inside an actor by ``warm``: import the client path and build the run's data and model
    (the per-actor cache a first message would build). False when building failed: the first
    message fails the same way, with the run's own error reporting."""
    from fedcls.apps.client_app import apply_torch_settings  # PyTorch, Flower's app, fedcls's training

    try:
        from fedcls.apps.runtime import get_runtime
        from fedcls.schema import Config

        cfg = Config.from_dict(json.loads(config_json))
        apply_torch_settings(cfg.backend.num_cpus, cfg.backend.tf32)
        get_runtime(cfg)
    except Exception:  # noqa: BLE001 - see the docstring
        return False
    return True


def warm(cfg) -> int:
    """Create as many client actors as Flower's pool will hold for `cfg`'s backend and start their
    imports, data and model; returns how many are in the reserve for them (0: `cfg` runs on
    the cohort executor, or no actor fits the resources, which Flower's pool then says)."""
    from flwr.simulation.ray_transport.ray_actor import ClientAppActor, pool_size_from_resources

    if cfg.backend.executor != "clientapp":
        return 0
    install()
    resources = client_resources(cfg.backend)
    try:
        count = pool_size_from_resources(resources)
    except ValueError:
        return 0
    config_json = json.dumps(cfg.to_dict())
    with _lock:
        idle = _reserve.setdefault(_key(resources), [])
        for _ in range(count - len(idle)):
            actor = ClientAppActor.options(**resources).remote()
            actor.__ray_call__.remote(prepare, config_json)
            idle.append(actor)
        return len(idle)


def _take(resources: dict):
    """A warm actor for a pool with these resources, or None. Actors kept for other resources are
    ended first: they hold the CPUs/GPUs the new pool's actors need."""
    import ray

    key = _key(resources)
    with _lock:
        for other in [k for k in _reserve if k != key]:
            for actor in _reserve.pop(other):
                ray.kill(actor)
        idle = _reserve.get(key)
        return idle.pop() if idle else None


def _give_back(resources: dict, actors: list) -> None:
    with _lock:
        _reserve.setdefault(_key(resources), []).extend(actors)


def release() -> None:
    """End every reserved actor (before another kind of actor needs the resources, or at the end)."""
    import ray

    with _lock:
        actors = [a for idle in _reserve.values() for a in idle]
        _reserve.clear()
    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor)


class keeping:
    """While inside, Flower's finished pools keep their actors here for the next run (a sweep)."""

    def __enter__(self):
        install()
        _keep.set()
        return self

    def __exit__(self, *exc) -> None:
        _keep.clear()
        release()


def install() -> None:
    """Make Flower's BasicActorPool take reserved actors and, while keeping, give them back."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if getattr(BasicActorPool, "_fedcls_reserve", False):
        return
    init, terminate = BasicActorPool.__init__, BasicActorPool.terminate_all_actors

    def init_taking_reserved(self, actor_type, client_resources, actor_kwargs):
        init(self, actor_type, client_resources, actor_kwargs)
        create = self.create_actor_fn
        self.create_actor_fn = lambda: _take(client_resources) or create()

    def terminate_or_keep(self) -> None:
        if _keep.is_set():
            _give_back(self.client_resources, self.pool)
            self.pool = []
            return
        terminate(self)

    BasicActorPool.__init__ = init_taking_reserved
    BasicActorPool.terminate_all_actors = terminate_or_keep
    BasicActorPool._fedcls_reserve = True
