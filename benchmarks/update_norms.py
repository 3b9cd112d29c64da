"""How far honest sites' updates spread: per round, the longest update over the median one
(what ``screening.norm_ratio`` compares against), for the default scenario's settings on several
partitions, in-process (the ClientApp's train function per site, no Ray). Justifies the default
norm_ratio (100): it must sit well above what honest sites send.

    python benchmarks/update_norms.py                                  # iid quantity_0.5 label_1 dirichlet_0.1 noise_0.1
    python benchmarks/update_norms.py dirichlet_0.5 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from flwr.supercore.task_identity import TaskIdentity

from fedcls.apps import screening
from fedcls.apps.cohort.worker import CohortWorker
from fedcls.apps.federation import run_federation
from fedcls.config import compose
from fedcls.data.federated import federated_data
from fedcls.engine.cohort_grid import CohortGrid
from fedcls.outputs.results import Recorder

RATIOS: list[float] = []


class MeasuringScreen(screening.ReplyScreen):
    """The server's screen, norm screening off, recording each round's max/median update norm."""

    def _screen_norms(self, verdicts: list, arrays) -> None:
        start = {k: a.numpy() for k, a in arrays.items()}
        norms = [screening._update_norm(m.content["arrays"], start) for m, _, why in verdicts
                 if why is None and m.content["metrics"]["num-examples"] > 0]
        if len(norms) >= 3:
            RATIOS.append(max(norms) / statistics.median(norms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=["iid", "quantity_0.5", "label_1", "dirichlet_0.1", "noise_0.1"])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):  # messages outside a Flower run
        setattr(TaskIdentity, attr, value)
    screening.ReplyScreen = MeasuringScreen  # what fedcls.apps.federation builds
    import fedcls.apps.federation as federation

    federation.ReplyScreen = MeasuringScreen
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            RATIOS.clear()
            cfg = compose([f"scenario={scenario}", f"rounds={args.rounds}", "save_model=false", "checkpoint_every=0",
                           "fraction_evaluate=0"])
            grid = CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)], echo=lambda line: None)
            run_federation(grid, cfg, federated_data(cfg), Recorder(Path(tmp) / scenario, cfg, echo=lambda line: None))
            worst = max(worst, *RATIOS)
            print(f"{scenario:>14}: max/median update norm per round {[round(r, 2) for r in RATIOS]}", flush=True)
    print(f"largest: {worst:.2f}x the median (screening.norm_ratio default: "
          f"{compose([]).screening.norm_ratio:g})")


if __name__ == "__main__":
    main()
