"""Bytes on the wire in one round of the default scenario (simple_cnn, 10 sites), per compression kind,
in-process with the cohort grid: MB to and from the sites and the ratio of what comes back against
uncompressed float32 (the README's compression numbers).

    python benchmarks/traffic.py
"""

from flwr.supercore.task_identity import TaskIdentity

from fedcls.apps.cohort.worker import CohortWorker
from fedcls.apps.federation import run_federation
from fedcls.config import compose
from fedcls.data.federated import federated_data
from fedcls.engine.cohort_grid import CohortGrid
from fedcls.outputs.results import Recorder


def main() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
    counted = {}
    for kind in ("none", "float16", "int8", "topk"):
        cfg = compose(["scenario=dirichlet_0.1", "rounds=1", "local_epochs=1", "tracking.tensorboard=false",
                       f"compression.kind={kind}", "checkpoint_every=0", "save_model=false",
                       "output_dir=/tmp/fedcls-traffic"])
        recorder = Recorder(f"/tmp/fedcls-traffic/{kind}", cfg, echo=lambda line: None)
        run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg,
                       federated_data(cfg), recorder)
        counted[kind] = recorder.rows[0]["bytes"]
    for kind, b in counted.items():
        print(f"{kind:8s} to sites {b['to_sites'] / 1e6:.2f} MB  back {b['from_sites'] / 1e6:.3f} MB  "
              f"back vs none {b['from_sites'] / counted['none']['from_sites']:.3f}x")


if __name__ == "__main__":
    main()
