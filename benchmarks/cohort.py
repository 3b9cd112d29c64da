"""Seconds per steady-state round of client training: a plain sequential loop, the per-client
Flower path (a ClientApp per client on Ray actors), and the cohort executor (Ray actors each
training a cohort of clients with vmap), on the same work and device; and their ratios.

Same work in all three: the same data, partition, model, initial weights and local training
(seeded batches, SGD with momentum), FedAvg, no federated evaluation. The Flower paths report
the time of each round's training exchange (``train_seconds`` in metrics.jsonl: sending the
weights, training, replies), the plain loop its training time; median over rounds 2..N.

    python benchmarks/cohort.py                                 # CPU: simple_cnn, 20 x 100 samples
    python benchmarks/cohort.py --workload resnet18             # the issue's GPU workload
    python benchmarks/cohort.py --workload resnet18 --clients 1000 --fraction 0.1 --skip-flower

On a GPU it also prints each simulated path's peak GPU memory: the device-wide memory in use (all
processes, so the Ray actors' CUDA contexts and allocations) polled every 50 ms during the run, above
the level when the run began. ``--json PATH`` writes the figures for benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import TrainParams, local_update
from fedcls.apps.client_app import round_seed
from fedcls.apps.runtime import pick_device
from fedcls.config import compose
from fedcls.data.federated import federated_data, site_tensors
from fedcls.schema import Config

WORKLOADS = {  # the issue's: ResNet-18 (GroupNorm), 500 samples per client, 1 epoch, batch 32
    "simple_cnn": ["model=simple_cnn", "dataset=synthetic", "data.synthetic.image_size=28",
                   "data.synthetic.channels=1"],
    "resnet18": ["model=resnet18", "model.norm=group", "dataset=synthetic", "data.synthetic.image_size=32",
                 "data.synthetic.channels=3"],
}


def config(args) -> Config:
    gpu = torch.cuda.is_available()
    n = args.clients
    samples = int(args.samples * n / (1 - 0.2))  # 20% of the pool is the global test set
    return compose([*WORKLOADS[args.workload], f"data.synthetic.num_samples={samples}", "scenario=iid",
                    f"num_clients={n}", f"rounds={args.rounds}", "local_epochs=1", "batch_size=32",
                    "lr=0.01", "momentum=0.9", f"fraction_train={args.fraction}", "fraction_evaluate=0",
                    "data.local_test_fraction=0.01", "save_model=false",
                    f"backend.num_gpus={1.0 / args.actors if gpu else 0}", "device=auto",
                    f"backend.num_cpus={1 if gpu else 1}", *args.overrides])


def plain_loop(cfg: Config) -> list[float]:
    """Every sampled client trained in turn in this process, on the same device: seconds per round."""
    data = federated_data(cfg)
    device = pick_device(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes).to(device)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    k = max(int(cfg.num_clients * cfg.fraction_train), 1)
    sites = [site_tensors(data, i, device) for i in range(k)]
    seconds = []
    for rnd in range(1, cfg.rounds + 1):
        started = time.perf_counter()
        for site_id, site in enumerate(sites):
            model.load_state_dict(start_state)
            seed = round_seed(cfg, rnd, site_id)
            local_update(model, site, TrainParams(cfg.local_epochs, cfg.batch_size, cfg.lr,
                                                  cfg.momentum, cfg.weight_decay, seed), [], {})
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


class GpuPeak:
    """Peak device-wide GPU memory in use (GiB) while the block runs, above the level it began at."""

    def __enter__(self) -> GpuPeak:
        self.gib, self.stop = 0.0, threading.Event()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            self.base = self.used()
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()
        return self

    @staticmethod
    def used() -> float:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**30

    def poll(self) -> None:
        while not self.stop.wait(0.05):
            self.gib = max(self.gib, self.used() - self.base)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if torch.cuda.is_available():
            self.thread.join()


def simulated(cfg: Config, executor: str, out: Path, num_gpus: float | None = None) -> list[float]:
    from dataclasses import replace

    from fedcls.engine.runner import run

    backend = replace(cfg.backend, executor=executor, num_gpus=cfg.backend.num_gpus if num_gpus is None else num_gpus)
    run_cfg = replace(cfg, output_dir=str(out), run_id=executor, backend=backend)
    if run(run_cfg, echo=None) != 0:
        raise SystemExit(f"the {executor} run failed: see {out / executor}")
    rows = [json.loads(line) for line in (out / executor / "metrics.jsonl").read_text().splitlines()]
    return [r["train_seconds"] for r in rows]


def steady(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="simple_cnn")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--samples", type=int, default=100, help="training samples per client")
    parser.add_argument("--fraction", type=float, default=1.0, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--actors", type=int, default=1, help="cohort actors (and Flower actors per GPU)")
    parser.add_argument("--flower-actors", type=int, help="Flower actors per GPU (default: --actors)")
    parser.add_argument("--skip-flower", action="store_true", help="skip the per-client Flower path")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_args()
    cfg = config(args)
    cfg.backend.cohort_actors = args.actors
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"workload: {args.workload}, {args.clients} clients x {args.samples} samples, {args.fraction:.0%} "
          f"sampled, 1 epoch, batch 32, {args.rounds} rounds, device: {device}")
    rows, gpu_peaks = {"plain loop": steady(plain_loop(cfg))}, {}
    flower_gpus = 1.0 / args.flower_actors if args.flower_actors and torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = [("cohort executor", "cohort", None)]
        if not args.skip_flower:
            paths.insert(0, ("per-client Flower path", "clientapp", flower_gpus))
        for name, executor, gpus in paths:
            with GpuPeak() as peak:
                rows[name] = steady(simulated(cfg, executor, Path(tmp), gpus))
            gpu_peaks[name] = peak.gib
    if torch.cuda.is_available():
        print(f"peak GPU memory in this process: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        for name, gib in gpu_peaks.items():
            print(f"peak GPU memory on the device during the {name} run (above its start): {gib:.2f} GiB")
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process (the driver): {rss:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "workload": args.workload, "clients": args.clients, "samples": args.samples,
            "fraction": args.fraction, "rounds": args.rounds, "actors": args.actors,
            "flower_actors": args.flower_actors or args.actors, "seconds_per_round": rows,
            "gpu_peak_gib": gpu_peaks, "driver_rss_gib": rss}, indent=2))
    base = rows["plain loop"]
    print(f"{'path':<26}{'s/round':>10}{'vs plain':>10}{'vs cohort':>11}")
    for name, value in rows.items():
        print(f"{name:<26}{value:>10.3f}{value / base:>10.2f}{value / rows['cohort executor']:>11.2f}")


if __name__ == "__main__":
    sys.exit(main())
