"""Round overhead of fedcls (Flower simulation on Ray) against a plain in-process FedAvg loop.

Both do the same work: same data, partition, model, initial weights, local training (the same
``local_update`` with the same per-client seeds), weighted averaging, and evaluation on every
site's local test split and the global test set. Prints steady-state seconds per round (median
of rounds 2..N) for each, their ratio, and fedcls's start-up (command start to round 1 begun).

    python benchmarks/round_overhead.py                    # defaults: dirichlet_0.1, 10 clients
    python benchmarks/round_overhead.py --rounds 6 num_clients=20 local_epochs=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import TrainParams, evaluate, local_update
from fedcls.apps.client_app import round_seed
from fedcls.config import compose
from fedcls.data.federated import federated_data, site_tensors
from fedcls.schema import Config


def plain_loop(cfg: Config) -> list[float]:
    """FedAvg in one process, no Flower, no Ray: seconds per round."""
    data = federated_data(cfg)
    ds, device = data.dataset, torch.device("cpu")
    sites = [site_tensors(data, i, device) for i in range(cfg.num_clients)]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.shape, ds.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    test_x, test_y = ds.normalize(ds.test_x), ds.test_y
    seconds = []
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        total, weighted = 0, {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        for site_id, site in enumerate(sites):
            model.load_state_dict(global_state)
            seed = round_seed(cfg, rnd, site_id)
            torch.manual_seed(seed)
            params = TrainParams(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum,
                                 cfg.weight_decay, seed)
            local_update(model, site, params, [], {})
            n = len(site.train_y)
            for k, v in model.state_dict().items():
                weighted[k] += v.float() * n
            total += n
        global_state = {k: (v / total).to(global_state[k].dtype) for k, v in weighted.items()}
        model.load_state_dict(global_state)
        for site_id, site in enumerate(sites):
            evaluate(model, site.test_x, site.test_y, noise_scale=site.noise_scale)
        _, acc = evaluate(model, test_x, test_y)
        seconds.append(time.perf_counter() - start)
        print(f"  plain round {rnd}: {seconds[-1]:.2f}s acc {acc:.4f}", flush=True)
    return seconds


def fedcls_run(overrides: list[str]) -> tuple[list[float], float]:
    """Run python -m fedcls.simulate; (seconds per round, start-up seconds)."""
    with tempfile.TemporaryDirectory() as out:
        launched = time.time()
        subprocess.run([sys.executable, "-m", "fedcls.simulate", *overrides, f"output_dir={out}",
                        "run_id=bench", "save_model=false"], check=True)
        rows = [json.loads(line) for line in (Path(out) / "bench" / "metrics.jsonl").open()]
    return [r["seconds"] for r in rows], rows[0]["started_at"] - launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="fedcls config overrides (key=value)")
    args = parser.parse_args()
    overrides = ["scenario=dirichlet_0.1", f"rounds={args.rounds}", *args.overrides]
    cfg = compose(overrides)
    print(f"config: {' '.join(overrides)} (simple_cnn unless overridden; {cfg.num_clients} clients)")
    fed_rounds, startup = fedcls_run(overrides)
    plain_rounds = plain_loop(cfg)
    fed, plain = statistics.median(fed_rounds[1:]), statistics.median(plain_rounds[1:])
    print(f"steady-state s/round: fedcls {fed:.3f}  plain loop {plain:.3f}  ratio {fed / plain:.2f}")
    print(f"fedcls first round {fed_rounds[0]:.2f}s; start-up (command start -> round 1 begun) "
          f"{startup:.1f}s")


if __name__ == "__main__":
    main()
