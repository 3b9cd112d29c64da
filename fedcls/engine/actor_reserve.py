"""Client actors (fedcls.engine.site_actor) that are warm before Flower asks for them, and kept for
a sweep's next run.

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

With ``backend.keep_actors`` the actors outlive the command: they are Ray detached actors, named
after the code they imported (``code_version``), in the Ray the run attached to (a ``ray start``
instance), and the next command's run of the same code takes them instead of starting its own.
Its first call empties their per-process caches (data files may have changed between commands).
Kept actors of other code or resources are ended: they hold the CPUs the new ones need.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading

from fedcls.engine.code_digest import code_digest

NAMESPACE = "fedcls"  # the Ray namespace of actors kept between commands
KEPT_PREFIX = "fedcls-client-"

_lock = threading.Lock()
_reserve: dict[tuple, list] = {}  # resources key -> idle warm actors
_kept: set[str] = set()  # ids of the reserve's detached actors: forgotten, never ended, by release()
_keep = threading.Event()


def _key(resources: dict) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in resources.items()))


def client_resources(backend) -> dict:
    """A client actor's Ray resources from the config's backend section (Flower's client_resources)."""
    return {"num_cpus": backend.num_cpus, "num_gpus": backend.num_gpus}


def prepare(actor_self, config_json: str, fresh: bool = False) -> bool:
    """Run inside an actor by ``warm``: import the client path and build the run's data and model
    (the per-actor cache a first message would build); `fresh`: first empty the caches an earlier
    command left. False when building failed: the first message fails the same way, with the run's
    own error reporting."""
    from fedcls.apps.client_app import apply_torch_settings  # PyTorch, Flower's app, fedcls's training

    try:
        from fedcls.apps.runtime import get_runtime
        from fedcls.caching import forget_everything
        from fedcls.schema import Config

        if fresh:
            forget_everything()
        cfg = Config.from_dict(json.loads(config_json))
        apply_torch_settings(cfg.backend.num_cpus, cfg.backend.tf32)
        get_runtime(cfg)
    except Exception:  # noqa: BLE001 - see the docstring
        return False
    return True


def warm(cfg) -> tuple[int, int]:
    """Create as many client actors as Flower's pool will hold for `cfg`'s backend and start their
    imports, data and model (with backend.keep_actors: take those an earlier command kept, and
    keep any new one); returns how many are in the reserve for them, and how many of those an
    earlier command kept. (0, 0): `cfg` runs on the cohort executor, or no actor fits the
    resources, which Flower's pool then says."""
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    if cfg.backend.executor != "clientapp":
        return 0, 0
    install()
    resources = client_resources(cfg.backend)
    try:
        count = pool_size_from_resources(resources)
    except ValueError:
        return 0, 0
    config_json = json.dumps(cfg.to_dict())
    with _lock:
        idle = _reserve.setdefault(_key(resources), [])
        names = [kept_name(resources, i) for i in range(count)] if cfg.backend.keep_actors else []
        earlier = _end_other_kept(names) if names else set()
        for i in range(len(idle), count):
            name = names[i] if names else None
            actor = _new_actor(resources, name)
            actor.__ray_call__.remote(prepare, config_json, name in earlier)
            idle.append(actor)
        return len(idle), len(earlier & set(names[:len(idle)]))


def _new_actor(resources: dict, name: str | None):
    """A client actor as Flower's pool makes it; with a `name`, a detached one (taken over
    when an earlier command left it running)."""
    from fedcls.engine.site_actor import SiteActor

    if name is None:
        return SiteActor.options(**resources).remote()
    actor = SiteActor.options(name=name, namespace=NAMESPACE, lifetime="detached",
                              get_if_exists=True, **resources).remote()
    _kept.add(actor._actor_id.hex())
    return actor


def kept_name(resources: dict, index: int) -> str:
    """A kept actor's name: this code's version, the actor's resources, its index."""
    spec = "-".join(f"{k}{float(v):g}" for k, v in _key(resources))
    return f"{KEPT_PREFIX}{code_version()}-{spec}-{index}"


def _end_other_kept(names: list[str]) -> set[str]:
    """End the kept actors in this Ray that are not `names` (other code, other resources); the
    names of those that are."""
    import ray

    found = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == NAMESPACE and a["name"].startswith(KEPT_PREFIX)}
    for other in found - set(names):
        try:
            ray.kill(ray.get_actor(other, namespace=NAMESPACE))
        except ValueError:  # ended meanwhile
            pass
    return found & set(names)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of what a client actor imports and runs (fedcls.engine.code_digest) and of where it
    finds it (sys.path, PYTHONPATH): a kept actor of other code is not reused."""
    return code_digest(sys.path, os.environ.get("PYTHONPATH"))


def _take(resources: dict):
    """A warm actor for a pool with these resources, or None. Actors kept for other resources are
    ended first: they hold the CPUs/GPUs the new pool's actors need."""
    import ray

    key = _key(resources)
    with _lock:
        for other in [k for k in _reserve if k != key]:
            for actor in _reserve.pop(other):
                ray.kill(actor)  # kept ones too: they hold the resources
        idle = _reserve.get(key)
        return idle.pop() if idle else None


def _give_back(resources: dict, actors: list) -> None:
    with _lock:
        _reserve.setdefault(_key(resources), []).extend(actors)


def release() -> None:
    """End every reserved actor (before another kind of actor needs the resources, or at the end),
    except those kept for later commands (backend.keep_actors), which are only forgotten here."""
    import ray

    with _lock:
        actors = [a for idle in _reserve.values() for a in idle if a._actor_id.hex() not in _kept]
        _reserve.clear()
        _kept.clear()
    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor)


def _forget(actor_self) -> None:
    from fedcls.caching import forget_everything

    forget_everything()


def forget_in_actors() -> None:
    """Make every reserved actor empty its caches before its next message (a warm driver's next
    command: data files may have changed); Ray runs an actor's calls from one caller in order."""
    with _lock:
        actors = [a for idle in _reserve.values() for a in idle]
    for actor in actors:
        actor.__ray_call__.remote(_forget)


class keeping:
    """While inside, Flower's finished pools keep their actors here for the next run (a sweep)."""

    def __enter__(self):
        install()
        _keep.set()
        return self

    def __exit__(self, *exc) -> None:
        _keep.clear()
        release()

    @staticmethod
    def active() -> bool:
        return _keep.is_set()


def install() -> None:
    """Make Flower's BasicActorPool take reserved actors, create fedcls's SiteActor (Flower's
    ClientAppActor without importing flwr.simulation) when none is reserved and, while keeping,
    give its actors back."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if getattr(BasicActorPool, "_fedcls_reserve", False):
        return
    init, terminate = BasicActorPool.__init__, BasicActorPool.terminate_all_actors

    def init_taking_reserved(self, actor_type, client_resources, actor_kwargs):
        from fedcls.engine.site_actor import SiteActor

        init(self, actor_type, client_resources, actor_kwargs)
        kwargs = actor_kwargs or {}
        self.create_actor_fn = lambda: _take(client_resources) or SiteActor.options(**client_resources).remote(**kwargs)

    def terminate_or_keep(self) -> None:
        if _keep.is_set():
            _give_back(self.client_resources, self.pool)
            self.pool = []
            return
        terminate(self)

    BasicActorPool.__init__ = init_taking_reserved
    BasicActorPool.terminate_all_actors = terminate_or_keep
    BasicActorPool._fedcls_reserve = True
