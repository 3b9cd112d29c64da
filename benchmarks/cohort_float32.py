"""How far the cohort executor's weights drift from the per-client path's in float32 (batched
and single matrix products round differently; SGD with momentum amplifies it), against float64.

Both paths run in this process through the same round loop (fedcls.apps.federation) on the cohort
grid: the reference worker sends every message through the ClientApp's own functions, the
other trains cohorts with vmap. Prints the largest absolute weight difference after each setting.

    python benchmarks/cohort_float32.py                      # mnist5k, mlp, 5 Dirichlet sites, 1 round
    python benchmarks/cohort_float32.py rounds=2 momentum=0.0
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from flwr.supercore.task_identity import TaskIdentity

from fedcls.apps.cohort.worker import CohortWorker
from fedcls.apps.federation import run_federation
from fedcls.config import compose
from fedcls.data.federated import federated_data
from fedcls.engine.cohort_grid import CohortGrid
from fedcls.outputs.results import Recorder
from fedcls.schema import Config

ARGS = ["scenario=dirichlet_0.5", "num_clients=5", "rounds=1", "model=mlp", "momentum=0.9",
        "weight_decay=0.0005", "fraction_evaluate=0"]


def final_weights(cfg: Config, worker: CohortWorker, out: Path) -> dict[str, torch.Tensor]:
    recorder = Recorder(out, cfg, echo=lambda line: None)
    return run_federation(CohortGrid(cfg.num_clients, [worker], echo=lambda line: None), cfg, federated_data(cfg),
                          recorder).to_torch_state_dict()


def drift(cfg: Config, dtype: torch.dtype, tmp: Path) -> float:
    torch.set_default_dtype(dtype)
    try:
        reference = final_weights(cfg, CohortWorker(per_client=True), tmp / f"ref-{dtype}")
        cohort = final_weights(cfg, CohortWorker(), tmp / f"cohort-{dtype}")
    finally:
        torch.set_default_dtype(torch.float32)
    return max((reference[k] - cohort[k]).abs().max().item() for k in reference)


def main() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
    cfg = compose([*ARGS, *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.float64):
            print(f"{str(dtype):<15} max |cohort - per-client| weight difference: {drift(cfg, dtype, Path(tmp)):.3g}")


if __name__ == "__main__":
    main()
