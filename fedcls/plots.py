"""Run plots: accuracy and loss per round; the partition as a clients x classes heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(rows: list[dict], path: Path) -> None:
    """Global test accuracy (with the sites' min-max band) and losses vs round."""
    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_acc.plot(rounds, [r["accuracy"] for r in rows], marker=".", label="global test")
    if rows and "accuracy_min" in rows[0]["clients"]:
        ax_acc.fill_between(rounds, [r["clients"].get("accuracy_min", 0) for r in rows],
                            [r["clients"].get("accuracy_max", 0) for r in rows],
                            alpha=0.2, label="sites' local test (min-max)")
    ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Accuracy")
    ax_loss.plot(rounds, [r["loss"] for r in rows], marker=".", label="global test loss")
    if rows and "train_loss" in rows[0]["train"]:
        ax_loss.plot(rounds, [r["train"].get("train_loss") for r in rows], marker=".",
                     label="mean train loss")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_partition(counts: list[list[int]], path: Path) -> None:
    """Samples per client and class."""
    n_clients = len(counts)
    fig, ax = plt.subplots(figsize=(6, max(2.5, min(0.3 * n_clients + 1.5, 12))), constrained_layout=True)
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(xlabel="class", ylabel="client", title="Partition: samples per client and class")
    ax.set_xticks(range(len(counts[0])))
    if n_clients <= 30:
        ax.set_yticks(range(n_clients))
    fig.colorbar(image, ax=ax, label="samples")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_run(rows: list[dict], counts: list[list[int]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if rows:
        plot_accuracy(rows, folder / "accuracy.png")
    if counts:
        plot_partition(counts, folder / "partition.png")
