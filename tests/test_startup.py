"""A sweep's client actors: started warm (fedcls.engine.actor_reserve), taken by Flower's actor
pool, and passed from run to run. Real Ray, real Flower actor pools, in this process."""

from fedcls.config import compose
from fedcls.engine import actor_reserve
from fedcls.engine.simulation import shared_ray

RESOURCES = {"num_cpus": 1, "num_gpus": 0}


def _pool():
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    pool = BasicActorPool(actor_type=ClientAppActor, client_resources=RESOURCES, actor_kwargs={})
    pool.add_actors_to_pool(pool.actors_capacity)
    return pool


def test_a_sweeps_warm_actors_are_taken_by_flowers_pools_and_kept_from_run_to_run():
    import ray

    with shared_ray(first=compose(["backend.num_cpus=1"])):
        warm = list(actor_reserve._reserve[actor_reserve._key(RESOURCES)])
        assert len(warm) == _capacity() >= 1
        # the warm actors imported the client path
        assert ray.get([a.__ray_call__.remote(lambda self: __import__("sys").modules.get("torch") is not None)
                        for a in warm]) == [True] * len(warm)
        assert actor_reserve.warm(compose(["backend.executor=cohort"])) == (0, 0)  # cohorts start their own

        first = _pool()
        assert set(map(_id, first.pool)) == set(map(_id, warm))  # Flower's pool made no actor of its own
        assert actor_reserve._reserve[actor_reserve._key(RESOURCES)] == []
        first.terminate_all_actors()  # the run ends: its actors serve the next run
        second = _pool()
        assert set(map(_id, second.pool)) == set(map(_id, warm))
        second.terminate_all_actors()
        other = {"num_cpus": 2, "num_gpus": 0}  # another run's resources: the kept actors end
        assert actor_reserve._take(other) is None and actor_reserve._reserve == {}
    assert not ray.is_initialized()


def _capacity() -> int:
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    return pool_size_from_resources(RESOURCES)


def _id(actor) -> str:
    return actor._actor_id.hex()
