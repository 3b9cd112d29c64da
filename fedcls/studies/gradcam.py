"""Grad-CAM per site (Selvaraju et al., ICCV 2017): where the run's final global model looks when it
classifies a few test images of each site, held-out target sites included, side by side. Uses the
maintained ``grad-cam`` package (pytorch_grad_cam), not a hand-written Grad-CAM; fedcls only picks
each model kind's layer and lays out the figure.

Writes <run folder>/explain/: gradcam.png and .pdf (a row per site: each image with its heatmap,
true and predicted class) and heatmaps.npz (per site: the heatmaps in [0, 1], labels, predictions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedcls.errors import UserError
from fedcls.schema import Config

EXPLAIN_DIR = "explain"


def target_layer(model: torch.nn.Module, kind: str) -> tuple[torch.nn.Module, object]:
    """(the layer whose activations and gradients Grad-CAM weighs, the reshape that turns its
    output into channels x height x width, or None) for a fedcls model kind."""
    if kind == "resnet18":
        return model.features.layer4[-1], None  # the last residual block, as in the Grad-CAM paper's ResNets
    if kind == "vit_tiny":
        vit = model.features.vit
        side = vit.image_size // vit.patch_size

        def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:  # drop the class token; patches as a grid
            grid = tokens[:, 1:, :].reshape(tokens.size(0), side, side, tokens.size(2))
            return grid.permute(0, 3, 1, 2)
        return vit.encoder.layers[-1].ln_1, tokens_to_grid  # the last block's input norm (Gildenblat's ViT recipe)
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise UserError(f"Grad-CAM needs convolutions or attention over image patches; model={kind} has "
                        f"neither: explain a run of model=simple_cnn, simple_cnn_bn, resnet18 or vit_tiny")
    return convs[-1], None  # simple_cnn(_bn): the last convolution


def load_global_model(run_dir: Path, cfg: Config, data) -> torch.nn.Module:
    """The run's final global model (model.pt) in eval mode."""
    from fedcls.algorithms.models import build_model

    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise UserError(f"{run_dir} has no model.pt (the run was made with save_model=false, or did not "
                        f"complete): rerun it with save_model=true (its summary.json's command, plus save_model=true)")
    model = build_model(cfg.model, data.dataset.shape, data.dataset.num_classes)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def site_examples(data, site: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images as stored, model inputs, labels) of `count` test images of `site` (its training
    images when it keeps no local test split), taking its classes in turn: the first image of each
    class, then the second of each, ..."""
    from fedcls.data.federated import site_images

    train_x, train_y, test_x, test_y = site_images(data, site)
    images, labels = (test_x, test_y) if len(test_y) else (train_x, train_y)
    y = labels.numpy()
    turn = np.array([np.sum(y[:i] == c) for i, c in enumerate(y)])  # how many of its class came before
    chosen = torch.as_tensor(np.lexsort((y, turn))[:count])
    return images[chosen], data.dataset.normalize(images[chosen]), labels[chosen]


def heatmaps(model: torch.nn.Module, kind: str, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(Grad-CAM heatmaps N x H x W in [0, 1] for each image's predicted class, the predictions)."""
    from pytorch_grad_cam import GradCAM

    layer, reshape = target_layer(model, kind)
    with torch.no_grad():
        predictions = model(inputs).argmax(1).numpy()
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=inputs, targets=None)  # None: each image's highest-scoring class
    return np.asarray(maps, dtype=np.float32), predictions


def overlay(image: torch.Tensor, heatmap: np.ndarray) -> np.ndarray:
    """The image (scaled to [0, 1], grey as RGB) under its heatmap, as grad-cam draws it."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image.float().permute(1, 2, 0).numpy()
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[:, :, :3]
    rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-8)
    return show_cam_on_image(rgb.astype(np.float32), heatmap, use_rgb=True)


def explain(run_dir: Path, images: int = 4, sites: list[int] | None = None) -> Path:
    """Grad-CAM of the run's global model on `images` test images of each site; the folder written."""
    from fedcls.config import run_config
    from fedcls.data.federated import federated_data

    cfg = run_config(run_dir, str(run_dir))
    data = federated_data(cfg)
    model = load_global_model(run_dir, cfg, data)
    chosen = list(range(cfg.num_clients)) if sites is None else sites
    if bad := [s for s in chosen if not 0 <= s < cfg.num_clients]:
        raise UserError(f"--sites {bad[0]}: the run has sites 0..{cfg.num_clients - 1}")
    rows, arrays = [], {}
    for site in chosen:
        stored, inputs, labels = site_examples(data, site, images)
        maps, predictions = heatmaps(model, cfg.model.name, inputs)
        rows.append((site, stored, maps, labels.numpy(), predictions))
        arrays.update({f"site_{site}": maps, f"labels_{site}": labels.numpy(), f"predictions_{site}": predictions})
    out = run_dir / EXPLAIN_DIR
    out.mkdir(exist_ok=True)
    np.savez_compressed(out / "heatmaps.npz", **arrays)
    _figure(rows, set(cfg.domain.targets), cfg, out / "gradcam.png")
    return out


def _figure(rows: list[tuple], targets: set[int], cfg: Config, path: Path) -> None:
    from fedcls.outputs.plot_style import plt, run_title, save, style

    columns = max(len(r[2]) for r in rows)
    with style():
        fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns + 1.2, 1.7 * len(rows) + 0.8),
                                 squeeze=False, constrained_layout=True)
        for axes_row, (site, stored, maps, labels, predictions) in zip(axes, rows):
            for j, ax in enumerate(axes_row):
                ax.set_axis_off()
                if j < len(maps):
                    ax.imshow(overlay(stored[j], maps[j]))
                    ax.set_title(f"true {labels[j]}, pred {predictions[j]}", fontsize=7,
                                 color="black" if labels[j] == predictions[j] else "red")
            name = f"site {site}" + (" (held-out target)" if site in targets else "")
            axes_row[0].text(-0.08, 0.5, name, transform=axes_row[0].transAxes, rotation=90, ha="right",
                             va="center", fontsize=8)
        fig.suptitle(f"Grad-CAM of the final global model ({cfg.model.name}) per site\n"
                     + run_title(cfg.to_dict()), fontsize=8)
        save(fig, path)
