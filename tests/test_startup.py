"""Start-up work done early and kept: Ray and warm client actors started in the background
(fedcls.engine.early_ray), Flower's actor pool taking them, and a sweep passing them from run to
run (fedcls.engine.actor_reserve). Real Ray, real Flower actor pools, in this process."""

from fedcls.config import compose
from fedcls.engine import actor_reserve, early_ray

RESOURCES = {"num_cpus": 1, "num_gpus": 0}


def _pool():
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    pool = BasicActorPool(actor_type=ClientAppActor, client_resources=RESOURCES, actor_kwargs={})
    pool.add_actors_to_pool(pool.actors_capacity)
    return pool


def test_early_ray_starts_warm_actors_that_flower_pools_take_and_a_sweep_keeps():
    import ray

    assert not ray.is_initialized()
    early_ray.begin(compose(["backend.num_cpus=1"]))
    try:
        assert early_ray.wait()
        warm = list(actor_reserve._reserve[actor_reserve._key(RESOURCES)])
        assert len(warm) == _capacity() >= 1
        # the warm actors imported the client path and are alive after the starting thread's ray.init
        assert ray.get([a.__ray_call__.remote(lambda self: __import__("sys").modules.get("torch") is not None)
                        for a in warm]) == [True] * len(warm)

        first = _pool()
        assert set(map(_id, first.pool)) == set(map(_id, warm))  # Flower's pool made no actor of its own
        assert actor_reserve._reserve[actor_reserve._key(RESOURCES)] == []
        with actor_reserve.keeping():  # a sweep: the finished pool's actors serve the next run
            first.terminate_all_actors()
            second = _pool()
            assert set(map(_id, second.pool)) == set(map(_id, warm))
            second.terminate_all_actors()
            other = {"num_cpus": 2, "num_gpus": 0}  # another run's resources: the kept actors end
            assert actor_reserve._take(other) is None and actor_reserve._reserve == {}
    finally:
        early_ray.finish()
    assert not ray.is_initialized()


def _capacity() -> int:
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    return pool_size_from_resources(RESOURCES)


def _id(actor) -> str:
    return actor._actor_id.hex()


def test_early_ray_leaves_the_cohort_executor_to_start_its_own_ray():
    import ray

    early_ray.begin(compose(["backend.executor=cohort"]))  # its actors need another runtime env
    assert not early_ray.wait() and not ray.is_initialized()
