"""Run plots: accuracy and loss per round; the partition as a clients x classes heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
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
    if rows and "experience_accuracy" in rows[-1]:
        from fedcls.outputs.continual_plots import plot_continual

        plot_continual(rows, folder)


def plot_study_accuracy(cells, strategies: list[str], scenario: str, path: Path) -> None:
    """Accuracy vs round in one scenario: mean over seeds, std band, a line per strategy."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for strategy in strategies:
        if (strategy, scenario) not in cells:
            continue
        curves = cells[(strategy, scenario)].curves
        length = min(map(len, curves))
        data = np.array([c[:length] for c in curves])
        rounds = np.arange(1, length + 1)
        mean, std = data.mean(0), data.std(0, ddof=1) if len(data) > 1 else np.zeros(length)
        (line,) = ax.plot(rounds, mean, label=strategy)
        ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="round", ylabel="global test accuracy", ylim=(0, 1), title=scenario)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_degradation(cells, strategies, scenarios, degradation, path: Path) -> None:
    """Grouped bars: points lost against iid, per scenario and strategy; error bars: the std over
    seeds of the difference, sqrt(std_scenario^2 + std_iid^2) (seeds drawn independently)."""
    shown = [c for c in scenarios if c != "iid"]
    width = 0.8 / max(len(strategies), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(shown) + 2), 4), constrained_layout=True)
    for i, strategy in enumerate(strategies):
        values = [degradation(cells, strategy, c) for c in shown]
        errors = [difference_std(cells, strategy, c) for c in shown]
        ax.bar([j + i * width for j in range(len(shown))], [v or 0 for v in values], width, label=strategy,
               yerr=errors, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown))], shown, rotation=30, ha="right")
    ax.set(ylabel="accuracy lost vs iid (points)", title="Non-IID degradation")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def difference_std(cells, strategy: str, scenario: str) -> float:
    """Std over seeds, in points, of a scenario's mean accuracy minus iid's (0 when one is missing)."""
    pair = [cells.get((strategy, scenario)), cells.get((strategy, "iid"))]
    return 0.0 if None in pair else 100 * (pair[0].std ** 2 + pair[1].std ** 2) ** 0.5


def plot_study(cells, strategies, scenarios, folder: Path, degradation) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for scenario in scenarios:
        plot_study_accuracy(cells, strategies, scenario, folder / f"accuracy_{scenario}.png")
        partition = next((cells[(s, scenario)].partition for s in strategies
                          if (s, scenario) in cells and cells[(s, scenario)].partition), None)
        if partition:
            plot_partition(partition, folder / f"partition_{scenario}.png")
    if "iid" in scenarios and len(scenarios) > 1:
        plot_degradation(cells, strategies, scenarios, degradation, folder / "degradation.png")
