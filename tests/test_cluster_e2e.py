"""Scale-out: a simulation attached to a 2-node Ray cluster spreads its client actors over both."""

import json

import pytest

pytestmark = pytest.mark.e2e


def test_simulation_on_a_two_node_ray_cluster_uses_both_nodes(cli, tmp_path):
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)  # a second raylet: a worker node joining the head
    try:
        result = cli(f"backend.ray_address={cluster.address}", "num_clients=4", "rounds=2",
                     "local_epochs=1", f"output_dir={tmp_path}", "run_id=r", "save_model=false")
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
        assert [sorted(s for s, _ in r["trained"]) for r in rows] == [[0, 1, 2, 3]] * 2
        ray.init(address=cluster.address)
        actors = [a for a in state.actors().values() if a["ActorClassName"] == "ClientAppActor"]
        # one client actor per CPU (backend.num_cpus=1), one CPU per node: both nodes did client work
        assert len({a["Address"]["NodeID"] for a in actors}) == 2 == len(actors)
    finally:
        ray.shutdown()
        cluster.shutdown()
