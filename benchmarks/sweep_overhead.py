"""A sweep's wall time against a plain PyTorch loop doing the same training work in this process.

(a) runs the grid as one ``python -m fedcls.sweep`` subprocess and takes its wall time, from the
command to its exit (Python and Ray start-up, actors, data, rounds, outputs: what a user waits);
(b) does the same training work here, grid point by grid point, with no Flower and no Ray: the same
data (``federated_data``), model and initial weights (``build_model`` after ``torch.manual_seed(seed)``),
the same local update (``local_update`` with the per-client round seeds and the strategy's client
hooks, e.g. FedProx's proximal term) for each sampled site, FedAvg's example-weighted mean, and per
round the evaluation fedcls does (each evaluated site's local test split, and the global test set);
(c) prints seconds per run of each and the ratio sweep wall / plain loop (issue 19's target: <= 1.2).

The plain loop trains the sites one after another on PyTorch's default threads (2 on a 2-core
machine); the sweep trains two sites at once on two single-threaded Ray actors (backend.num_cpus=1).
On a shared machine the timings are contended: compare numbers taken back to back. There PyTorch's
two threads can stall each other (the plain loop measured 5-45 s per run of the default grid on a
busy 2-core machine); ``--threads 1`` is steadier but gives the plain loop one core to the sweep's two.

    python benchmarks/sweep_overhead.py             # 2 strategies x 4 partitions x 2 seeds, rounds=3 local_epochs=1
    python benchmarks/sweep_overhead.py seed=0 rounds=2              # an override replaces its default
    python benchmarks/sweep_overhead.py --singles   # also every grid point as its own fedcls.simulate command
    python benchmarks/sweep_overhead.py --served    # also the sweep sent to a warm driver (python -m fedcls.serve)
    python benchmarks/sweep_overhead.py --inprocess # also the sweep on backend.executor=inprocess (runs side by side)
    python benchmarks/sweep_overhead.py --inprocess rounds=15 local_epochs=2   # the reference study's run length

``--inprocess`` times the same sweep command with ``backend.executor=inprocess`` added: no client
actors, each grid point run by one Ray actor of its own, as many at once as there are CPUs
(fedcls.studies.side_by_side). The default grid's runs are short (3 rounds of 1 epoch, ~1.3 s of
training each), so a command's fixed costs (Python, Ray, actors: ~8 s) weigh on its ratio; the
reference study (results/studies/niid_mnist5k) runs 15 rounds of 2 local epochs.

``--served`` starts the warm driver first (not counted, as a researcher starts it once a day) and
times the same sweep command with FEDCLS_SERVER set, from the command to its exit.

The grid's plain loop knows the client hooks of strategies whose round config holds only
FedProx's "proximal-mu" (fedavg, fedprox, ...); others stop with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord

import strategies
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import TrainParams, evaluate, local_update
from fedcls.apps.client_app import round_seed
from fedcls.config import compose
from fedcls.data.federated import federated_data, site_tensors
from fedcls.schema import Config
from fedcls.studies.sweep import expand_grid

DEFAULTS = ["strategy=fedavg,fedprox", "scenario=iid,dirichlet_0.1,label_2,quantity_0.5", "seed=0,1",
            "rounds=3", "local_epochs=1", "save_model=false"]


def with_defaults(overrides: list[str]) -> list[str]:
    named = {o.split("=", 1)[0] for o in overrides}
    return [d for d in DEFAULTS if d.split("=", 1)[0] not in named] + overrides


def client_hooks(cfg: Config) -> list:
    round_config = ConfigRecord({"proximal-mu": float(cfg.strategy.params.get("proximal_mu", 0.0))})
    try:
        return strategies.get(cfg.strategy.name).client_hooks(round_config, {})
    except KeyError as missing:
        raise SystemExit(f"the plain loop does not know {cfg.strategy.name}'s round config ({missing})") from None


def plain_run(cfg: Config) -> tuple[float, float]:
    """One grid point's work in this process: (seconds in all, of which building the data)."""
    started = time.perf_counter()
    data = federated_data(cfg)
    ds, n = data.dataset, cfg.num_clients
    sites = [site_tensors(data, i, torch.device("cpu")) for i in range(n)]
    test_x, test_y = ds.normalize(ds.test_x), ds.test_y
    data_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.shape, ds.num_classes)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    sample = random.Random(cfg.seed).sample
    for rnd in range(1, cfg.rounds + 1):
        total, weighted = 0, {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        for i in sample(range(n), max(int(n * cfg.fraction_train), 1)):
            model.load_state_dict(global_state)
            seed = round_seed(cfg, rnd, i)
            local_update(model, sites[i], TrainParams(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum,
                                                      cfg.weight_decay, seed), client_hooks(cfg), {})
            for k, v in model.state_dict().items():
                weighted[k] += v.float() * len(sites[i].train_y)
            total += len(sites[i].train_y)
        global_state = {k: (v / total).to(global_state[k].dtype) for k, v in weighted.items()}
        model.load_state_dict(global_state)
        if cfg.fraction_evaluate > 0:
            for i in sample(range(n), max(int(n * cfg.fraction_evaluate), 1)):
                evaluate(model, sites[i].test_x, sites[i].test_y, noise_scale=sites[i].noise_scale)
        evaluate(model, test_x, test_y)
    return time.perf_counter() - started, data_seconds


def round_seconds(runs_dir: Path) -> float:
    return sum(json.loads(line)["seconds"] for p in runs_dir.glob("*/metrics.jsonl")
               for line in p.read_text().splitlines())


def timed(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def served_sweep(tmp: str, overrides: list[str], common: list[str]) -> float:
    """Seconds of the sweep command sent to a warm driver started (and not counted) here."""
    from startup import start_warm_driver  # benchmarks/startup.py

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    driver = start_warm_driver(f"{tmp}/serve.sock", common, env)
    try:
        return timed(["fedcls.sweep", f"output_dir={tmp}/served", *overrides], dict(env, FEDCLS_SERVER=f"{tmp}/serve.sock"))
    finally:
        driver.terminate()
        driver.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", action="store_true",
                        help="also run each grid point as its own python -m fedcls.simulate (slow)")
    parser.add_argument("--served", action="store_true", help="also the sweep sent to a warm driver (fedcls.serve)")
    parser.add_argument("--inprocess", action="store_true",
                        help="also the sweep on backend.executor=inprocess (grid points side by side)")
    parser.add_argument("--threads", type=int, help="PyTorch threads of the plain loop (default: PyTorch's)")
    parser.add_argument("overrides", nargs="*", help="key=value or key=a,b grid overrides (replace the defaults')")
    args = parser.parse_args()
    overrides = with_defaults(args.overrides)
    _, common, points = expand_grid(overrides)
    runs = len(points)
    print(f"grid: {' '.join(overrides)} ({runs} runs)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep_wall = timed(["fedcls.sweep", f"output_dir={tmp}/study", *overrides]) / runs
        sweep_rounds = round_seconds(Path(tmp) / "study" / "runs") / runs
        if args.singles:
            single_wall = sum(timed(["fedcls.simulate", *common, *point, f"output_dir={tmp}/singles"])
                              for point in points) / runs
            single_rounds = round_seconds(Path(tmp) / "singles") / runs
        if args.served:
            served_wall = served_sweep(tmp, overrides, common) / runs
            served_rounds = round_seconds(Path(tmp) / "served" / "runs") / runs
        if args.inprocess:
            inprocess_wall = timed(["fedcls.sweep", f"output_dir={tmp}/inprocess", *overrides,
                                    "backend.executor=inprocess"]) / runs
            inprocess_rounds = round_seconds(Path(tmp) / "inprocess" / "runs") / runs
    if args.threads:
        torch.set_num_threads(args.threads)
    plain = [plain_run(compose([*common, *point])) for point in points]
    plain_wall, plain_data = sum(p[0] for p in plain) / runs, sum(p[1] for p in plain) / runs
    print(f"sweep (one command):  {sweep_wall:6.1f} s/run wall, {sweep_rounds:.1f} s/run in rounds")
    if args.singles:
        print(f"single commands:      {single_wall:6.1f} s/run wall, {single_rounds:.1f} s/run in rounds")
    if args.served:
        print(f"sweep, warm driver:   {served_wall:6.1f} s/run wall, {served_rounds:.1f} s/run in rounds")
    if args.inprocess:
        print(f"sweep, inprocess:     {inprocess_wall:6.1f} s/run wall, {inprocess_rounds:.1f} s/run in rounds "
              f"(its runs side by side)")
    print(f"plain PyTorch loop:   {plain_wall:6.1f} s/run (data {plain_data:.1f} s/run), in this process on {torch.get_num_threads()} thread(s)")
    print(f"ratio sweep wall / plain loop: {sweep_wall / plain_wall:.2f} (target <= 1.2)")
    if args.served:
        print(f"ratio sweep with a warm driver / plain loop: {served_wall / plain_wall:.2f} (target <= 1.2)")
    if args.inprocess:
        print(f"ratio sweep on backend.executor=inprocess / plain loop: {inprocess_wall / plain_wall:.2f} (target <= 1.2)")
    if args.singles:
        print(f"ratio sweep / single commands: {sweep_wall / single_wall:.2f}")


if __name__ == "__main__":
    main()
