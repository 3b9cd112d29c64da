"""FedAvg (McMahan et al. 2017) in plain PyTorch beside fedcls's, on the same data.

The reference below shares NOTHING with fedcls's training code: it has its own model (NIID-Bench's
simple-CNN, written again), its own mini-batch SGD with momentum and weight decay, its own
weighted average and its own evaluation. It takes from fedcls only

- the data: each site's train tensors from fedcls's data layer (``site_tensors``: the partition's
  indices, the local train/test split and ``data.normalize`` applied) and the normalised global
  test set, so both sides see the same arrays;
- the initial global weights (copied by position into the reference model);
- the batch order, reproduced here by its own code from fedcls's documented rule: client ``i``'s
  work in round ``r`` is seeded with ``SeedSequence([seed, r, i]).generate_state(1)[0]``; a
  ``torch.Generator`` seeded with it draws, for each local epoch, ``randperm(n)`` cut into
  consecutive batches of ``batch_size`` (the last one shorter); with feature noise (the noise
  partition) each batch then draws ``randn(batch shape)`` from the same generator and adds it
  times the site's noise scale.

Each round every site trains (``fraction_train=1``) from the global weights with a fresh
optimiser (momentum buffers start empty), and the new global weights are the examples-weighted
mean of the sites' weights, accumulated in float32 in site order with weights n_i / N, as
Flower's FedAvg does. Run on CPU with the same thread count, the two agree to the last bit or a
few float32 ulps (tests/test_reference_fedavg.py).

    python benchmarks/fedavg_reference.py                       # mnist5k, dirichlet_0.5, 5 rounds
    python benchmarks/fedavg_reference.py rounds=10 data.normalize=none data.local_test_fraction=0
    python benchmarks/fedavg_reference.py --ray scenario=label_2  # fedcls through Flower on Ray

fedcls runs in-process through its ClientApp (``CohortWorker(per_client=True)``: every client a
real ClientApp call) unless ``--ray`` runs ``python -m fedcls.simulate`` instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULTS = ["scenario=dirichlet_0.5", "num_clients=10", "rounds=5", "local_epochs=2", "model=simple_cnn",
            "fraction_evaluate=0", "checkpoint_every=0"]


class SimpleCNN(nn.Module):
    """conv6(5x5)-maxpool-conv16(5x5)-maxpool-fc120-fc84-fc(classes), ReLU between (NIID-Bench)."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        side = ((size - 4) // 2 - 4) // 2  # two valid 5x5 convolutions, each followed by 2x2 pooling
        self.conv1, self.conv2 = nn.Conv2d(channels, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.out = nn.Linear(16 * side * side, 120), nn.Linear(120, 84), nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def copy_by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load another model's weights into `model` tensor by tensor, in order (names differ)."""
    own = list(model.state_dict())
    theirs = list(state.values())
    if len(own) != len(theirs) or any(model.state_dict()[k].shape != v.shape for k, v in zip(own, theirs)):
        raise ValueError("the weights do not fit the reference simple-CNN (model=simple_cnn only)")
    model.load_state_dict({k: v.detach().clone() for k, v in zip(own, theirs)})


def client_seed(seed: int, rnd: int, site: int) -> int:
    """The seed of one client's local work (the rule in the module docstring)."""
    return int(np.random.SeedSequence([seed, rnd, site]).generate_state(1)[0])


def sgd_step(params: list, grads: tuple, buffers: list, lr: float, momentum: float, decay: float) -> None:
    """p <- p - lr * v, v <- momentum * v + (g + decay * p); v starts at the first g + decay * p."""
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g.add(p, alpha=decay) if decay else g
        if momentum:
            buffers[i] = d.clone() if buffers[i] is None else buffers[i].mul_(momentum).add_(d)
            d = buffers[i]
        p.add_(d, alpha=-lr)


def local_training(model: nn.Module, site, hp: dict, seed: int) -> None:
    """Mini-batch SGD on one site's train tensors, batches drawn as fedcls draws them."""
    gen = torch.Generator().manual_seed(seed)
    params, buffers = list(model.parameters()), [None] * len(list(model.parameters()))
    n, noisy = len(site.train_y), bool((site.noise_scale > 0).any())
    model.train()
    for _ in range(hp["local_epochs"] if n else 0):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, hp["batch_size"]):
            idx = order[start:start + hp["batch_size"]]
            x = site.train_x[idx]
            if noisy:
                x = x + site.noise_scale.view(1, -1, 1, 1) * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(model(x), site.train_y[idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                sgd_step(params, grads, buffers, hp["lr"], hp["momentum"], hp["weight_decay"])


def weighted_average(states: list[dict], sizes: list[int]) -> dict[str, torch.Tensor]:
    """sum_i (n_i / N) * w_i, in float32, in site order."""
    total, out = sum(sizes), {}
    for state, n in zip(states, sizes):
        for k, v in state.items():
            out[k] = v * (n / total) if k not in out else out[k] + v * (n / total)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
    return correct / len(y)


def reference_fedavg(cfg: dict, sites: list, test: tuple, initial: dict) -> tuple[list[float], list[dict]]:
    """Per-round global test accuracy and global weights of plain FedAvg."""
    if cfg["fraction_train"] != 1 or cfg["model"]["name"] != "simple_cnn" or cfg["strategy"]["name"] != "fedavg":
        raise SystemExit("the reference is FedAvg with simple_cnn and fraction_train=1")
    channels, size = sites[0].train_x.shape[1], sites[0].train_x.shape[2]
    model = SimpleCNN(channels, size, int(cfg["_classes"]))
    copy_by_position(model, initial)
    global_state, accs, states = {k: v.clone() for k, v in model.state_dict().items()}, [], []
    for rnd in range(1, cfg["rounds"] + 1):
        trained = []
        for i, site in enumerate(sites):
            model.load_state_dict(global_state)
            local_training(model, site, cfg, client_seed(cfg["seed"], rnd, i))
            trained.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        global_state = weighted_average(trained, [len(s.train_y) for s in sites])
        model.load_state_dict(global_state)
        accs.append(accuracy(model, *test))
        states.append(global_state)
    return accs, states


def fedcls_in_process(cfg, out: Path) -> tuple[list[float], dict]:
    """fedcls's round loop and ClientApp, without Ray: (per-round accuracy, final weights)."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    saved = {k: getattr(TaskIdentity, k) for k in ("_task_id", "_run_id", "_node_id")}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
    try:
        recorder = Recorder(out / "fedcls", cfg, echo=lambda line: None)
        grid = CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)], echo=lambda line: None)
        arrays = run_federation(grid, cfg, federated_data(cfg), recorder)
    finally:
        for k, v in saved.items():
            setattr(TaskIdentity, k, v)
    return [r["accuracy"] for r in recorder.rows], arrays.to_torch_state_dict()


def fedcls_on_ray(args: list[str], out: Path) -> tuple[list[float], dict]:
    """``python -m fedcls.simulate`` (Flower simulation on Ray): (per-round accuracy, final weights)."""
    subprocess.run([sys.executable, "-m", "fedcls.simulate", *args, f"output_dir={out}", "run_id=fedcls",
                    "save_model=true"], check=True)
    rows = [json.loads(line) for line in (out / "fedcls" / "metrics.jsonl").read_text().splitlines()]
    return [r["accuracy"] for r in rows], torch.load(out / "fedcls" / "model.pt", weights_only=True)


def run_reference(cfg) -> tuple[list[float], list[dict]]:
    """The reference on fedcls's data for `cfg` (a composed config), from fedcls's initial weights;
    the reference itself reads the config as a plain dict."""
    from fedcls.apps.federation import global_evaluator
    from fedcls.data.federated import federated_data, site_tensors

    torch.set_num_threads(max(int(cfg.backend.num_cpus), 1))  # as fedcls's clients run
    data = federated_data(cfg)
    ds, cpu = data.dataset, torch.device("cpu")
    sites = [site_tensors(data, i, cpu) for i in range(cfg.num_clients)]
    initial = global_evaluator(cfg, ds)[0].to_torch_state_dict()
    return reference_fedavg({**cfg.to_dict(), "_classes": ds.num_classes}, sites, (ds.normalize(ds.test_x), ds.test_y), initial)


def compare(args: list[str], ray: bool = False) -> dict:
    """Run both on the config `args`; the per-round accuracies and the final weight gap."""
    from fedcls.config import compose

    cfg = compose([*DEFAULTS, *args])
    ref_accs, ref_states = run_reference(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run = fedcls_on_ray([*DEFAULTS, *args], Path(tmp)) if ray else fedcls_in_process(cfg, Path(tmp))
    accs, final = run
    gap = max((a - b).abs().max().item() for a, b in zip(final.values(), ref_states[-1].values()))
    return {"fedcls": accs, "reference": ref_accs, "max_weight_gap": gap, "cfg": cfg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ray", action="store_true", help="run fedcls through Flower's simulation on Ray")
    opts, overrides = parser.parse_known_args()
    result = compare(overrides, opts.ray)
    cfg = result["cfg"]
    print(f"{cfg.dataset} {cfg.partition.kind} {cfg.num_clients} clients, {cfg.local_epochs} "
          f"local epochs, data.normalize={cfg.data.normalize}, seed {cfg.seed}")
    print("round  fedcls  reference  difference")
    for rnd, (a, b) in enumerate(zip(result["fedcls"], result["reference"]), 1):
        print(f"{rnd:5d}  {a:6.4f}  {b:9.4f}  {a - b:+10.4f}")
    print(f"largest |fedcls - reference| weight difference after round {cfg.rounds}: {result['max_weight_gap']:.3g}")


if __name__ == "__main__":
    main()
