"""Centralised Deep CORAL reference (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep
Domain Adaptation", ECCV-W 2016) in plain PyTorch, for the federated CORAL of fedcls.algorithms.coral.

It shares with fedcls only the data arrays (each site's normalised train/test tensors of the
scenario, seed by seed) and the architecture (simple_cnn_bn, rewritten below): no fedcls
training, loss or federation code. The source sites' training images are pooled; the target
site's training images are used without labels; accuracy is on the target site's local test
split, as fedcls's target_accuracy. Same budget as the federation: rounds x local_epochs
epochs over the sources, batch 64, SGD lr 0.01 momentum 0.9 (the scenario's settings).

Methods: ``none`` (cross-entropy on the sources), ``paper`` (CE + lambda ||C_S - C_T||_F^2/4d^2,
both covariances from live batches, gradients through both: the paper's loss) and ``cosine``
(CE + lambda (1 - cos(C_S, C_T)), fedcls's scale-free loss, live on both sides).
Closed-form CORAL (Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI
2016) after source-only training, at the penultimate layer: ``recolour:g`` maps the target's
features f -> (C_S + eI)^1/2 (C_T + eI)^-1/2 (f - mu_T) + mu_S before the head (e = g x the mean
per-dimension variance of both sides); ``adabn`` re-estimates BatchNorm on the target's images
(AdaBN), ``adabn-recolour:g`` does both (as FedBN + coral.align=recolour). These reuse the
``none`` model of the same seed.

    python benchmarks/coral_reference.py                                  # 3 shifts x 3 seeds
    python benchmarks/coral_reference.py --scenarios hospitals --seeds 0 --methods none cosine:1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from fedcls.config import compose
from fedcls.data.federated import build_federated_data, site_tensors


def simple_cnn_bn(num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    """(features, head) of simple_cnn_bn for 1 x 28 x 28 inputs: conv6-BN-pool-conv16-BN-pool-120-84."""
    features = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return features, nn.Linear(84, num_classes)


def cov(f: torch.Tensor) -> torch.Tensor:
    c = f - f.mean(0, keepdim=True)
    return c.T @ c / (len(f) - 1)


def paper_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    return ((cov(fs) - cov(ft)) ** 2).sum() / (4 * fs.shape[1] ** 2)


def cosine_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    cs, ct = cov(fs), cov(ft)
    return 1 - (cs * ct).sum() / (torch.linalg.norm(cs) * torch.linalg.norm(ct)).clamp_min(1e-12)


LOSSES = {"paper": paper_loss, "cosine": cosine_loss}


def arrays(scenario: str, seed: int) -> dict[str, torch.Tensor]:
    """The scenario's sites as fedcls builds them for `seed`: pooled sources, the target."""
    cfg = compose([f"scenario={scenario}", f"seed={seed}"])
    data, cpu = build_federated_data(cfg), torch.device("cpu")
    (target,) = cfg.domain.targets
    sites = {s: site_tensors(data, s, cpu) for s in range(cfg.num_clients)}
    sources = [sites[s] for s in sites if s != target]
    return {"xs": torch.cat([s.train_x for s in sources]), "ys": torch.cat([s.train_y for s in sources]),
            "xt": sites[target].train_x, "xt_test": sites[target].test_x, "yt_test": sites[target].test_y,
            "epochs": cfg.rounds * cfg.local_epochs, "batch": cfg.batch_size,
            "lr": cfg.lr, "momentum": cfg.momentum}


def psd_power(c: torch.Tensor, p: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return vecs @ torch.diag(vals.clamp_min(1e-12) ** p) @ vecs.T


@torch.no_grad()
def feats(features: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([features(x[i:i + 1024]) for i in range(0, len(x), 1024)]).double()


@torch.no_grad()
def post_hoc(d: dict, model: tuple[nn.Module, nn.Module], method: str) -> float:
    """Target test accuracy of a source-only model, adapted at test time by `method`."""
    import copy

    features, head = copy.deepcopy(model)
    features.eval()
    fs = feats(features, d["xs"])
    if method.startswith("adabn"):
        for m in features.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        features.train()
        for i in range(0, len(d["xt"]), 256):
            features(d["xt"][i:i + 256])
        features.eval()
    ft, ft_test = feats(features, d["xt"]), feats(features, d["xt_test"])
    if "recolour" in method:
        cs, ct = cov(fs), cov(ft)
        eye = torch.eye(len(cs), dtype=cs.dtype)
        e = float(method.partition(":")[2]) * float(cs.trace() + ct.trace()) / (2 * len(cs))
        a = psd_power(cs + e * eye, 0.5) @ psd_power(ct + e * eye, -0.5)
        ft_test = (ft_test - ft.mean(0)) @ a.T + fs.mean(0)
    return float((head(ft_test.float()).argmax(1) == d["yt_test"]).float().mean())


def train(d: dict, method: str, seed: int, models: dict | None = None) -> float:
    """Target test accuracy after training with `method` ('none' or '<loss>:<lambda>'); the
    test-time methods (recolour, adabn) adapt the ``none`` model kept in `models`."""
    if method.startswith(("recolour", "adabn")):
        if "none" not in (models or {}):
            raise SystemExit(f"{method} adapts the 'none' model: list 'none' before it in --methods")
        return post_hoc(d, models["none"], method)
    torch.manual_seed(seed)
    features, head = simple_cnn_bn()
    params = list(features.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=d["lr"], momentum=d["momentum"])
    gen = torch.Generator().manual_seed(seed)
    name, _, lam = method.partition(":")
    for _ in range(d["epochs"]):
        for idx in torch.randperm(len(d["ys"]), generator=gen).split(d["batch"]):
            xs, ys = d["xs"][idx], d["ys"][idx]
            if name == "none":
                loss = nn.functional.cross_entropy(head(features(xs)), ys)
            else:
                xt = d["xt"][torch.randint(len(d["xt"]), (len(idx),), generator=gen)]
                if name.endswith("-split"):  # BatchNorm of each domain's own batch, as at the sites
                    fs, ft = features(xs), features(xt)
                else:
                    f = features(torch.cat([xs, xt]))  # one forward: BatchNorm sees both domains
                    fs, ft = f[:len(idx)], f[len(idx):]
                loss = nn.functional.cross_entropy(head(fs), ys) + float(lam) * LOSSES[name.removesuffix("-split")](fs, ft)
            opt.zero_grad()
            loss.backward()
            opt.step()
    features.eval()
    if models is not None:
        models[method] = (features, head)
    with torch.no_grad():
        return float((head(features(d["xt_test"])).argmax(1) == d["yt_test"]).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["digits_shift", "digits_shift_framed", "hospitals"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["none", "paper:10", "cosine:10"])
    p.add_argument("--json", default=None, help="write the accuracies here")
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    for scenario in args.scenarios:
        for seed in args.seeds:
            d, models = arrays(scenario, seed), {}
            for method in args.methods:
                started = time.time()
                acc = train(d, method, seed, models)
                results.setdefault(scenario, {}).setdefault(method, []).append(acc)
                print(f"{scenario} seed {seed} {method}: target accuracy {acc:.3f} ({time.time() - started:.0f} s)",
                      flush=True)
    print("\n| scenario | " + " | ".join(args.methods) + " |\n|---|" + "---|" * len(args.methods))
    for scenario, by in results.items():
        cells = [f"{100 * statistics.fmean(v):.1f} ± {100 * (statistics.stdev(v) if len(v) > 1 else 0):.1f}"
                 for v in by.values()]
        print(f"| {scenario} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
