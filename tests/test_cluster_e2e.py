"""Scale-out: a simulation attached to a 2-node Ray cluster spreads its client actors over both."""

import json

import pytest

pytestmark = pytest.mark.e2e


def test_simulation_on_a_two_node_ray_cluster_uses_both_nodes_and_keeps_its_actors(cli, tmp_path, monkeypatch):
    """Two runs with backend.keep_actors: the second takes the first's actors (it starts none of
    its own) and its rounds equal the first's; kept actors of other code are ended."""
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    from fedcls.config import compose
    from fedcls.engine import actor_reserve

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)  # a second raylet: a worker node joining the head
    args = [f"backend.ray_address={cluster.address}", "backend.keep_actors=true", "num_clients=4", "rounds=2",
            "local_epochs=1", f"output_dir={tmp_path}", "save_model=false"]
    try:
        runs = [cli(*args, f"run_id={name}") for name in ("first", "second")]
        assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-3000:]
        assert "2 client actors, 0 of them kept" in runs[0].stdout
        assert "2 client actors, 2 of them kept warm by an earlier run" in runs[1].stdout
        rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                for name in ("first", "second")]
        assert [sorted(s for s, _ in r["trained"]) for r in rows[0]] == [[0, 1, 2, 3]] * 2
        keys = ("accuracy", "loss", "train", "clients")
        assert [[r[k] for k in keys] for r in rows[1]] == [[r[k] for k in keys] for r in rows[0]]
        ray.init(address=cluster.address)
        actors = [a for a in state.actors().values() if a["ActorClassName"] == "SiteActor"]
        # one client actor per CPU (backend.num_cpus=1), one CPU per node: both nodes did client
        # work, and both runs ran on the same two actors
        assert len({a["Address"]["NodeID"] for a in actors}) == 2 == len(actors)
        assert {a["State"] for a in actors} == {"ALIVE"}
        # after two runs, the actors have not imported Flower's simulation runtime (SQL, FastAPI)
        heavy = lambda self: [m for m in ("flwr.simulation", "sqlalchemy", "fastapi") if m in __import__("sys").modules]  # noqa: E731
        kept = [ray.get_actor(a["Name"], namespace=actor_reserve.NAMESPACE) for a in actors]
        assert ray.get([actor.__ray_call__.remote(heavy) for actor in kept]) == [[], []]
        monkeypatch.setattr(actor_reserve, "code_version", lambda: "edited-code")  # the code changed: not reused
        cfg = compose(["backend.keep_actors=true"])
        assert actor_reserve.warm(cfg) == (2, 0)
        alive = [a["Name"] for a in state.actors().values() if a["State"] != "DEAD"]
        assert sorted(alive) == [actor_reserve.kept_name({"num_cpus": 1, "num_gpus": 0.0}, i) for i in (0, 1)]
    finally:
        actor_reserve.release()
        ray.shutdown()
        cluster.shutdown()
