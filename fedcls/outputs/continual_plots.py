"""Continual-run plots: the accuracy matrix as a heatmap; accuracy per experience vs round with
the experience boundaries marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_accuracy_matrix(matrix: list[list[float]], path: Path) -> None:
    """Rows: after experience i; columns: test set of experience j; numbers in the cells."""
    n_rows, n_cols = len(matrix), len(matrix[0])
    fig, ax = plt.subplots(figsize=(1.1 * n_cols + 2, 0.9 * n_rows + 1.5), constrained_layout=True)
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                    color="black" if value > 0.6 else "white", fontsize=9)
    ax.set(xlabel="test set of experience", ylabel="after training experience",
           title="Accuracy matrix", xticks=range(n_cols), yticks=range(n_rows))
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_experience_accuracy(rows: list[dict], path: Path) -> None:
    """Global accuracy and each experience's accuracy per round; dashed lines where the
    federation moves to the next experience."""
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    ax.plot(rounds, [r["accuracy"] for r in rows], color="black", lw=2.5, label="global test set")
    for j in range(len(rows[0]["experience_accuracy"])):
        ax.plot(rounds, [r["experience_accuracy"][j] for r in rows], marker=".", lw=1.2,
                label=f"experience {j}")
    for prev, row in zip(rows, rows[1:]):
        if row["experience"] != prev["experience"]:
            ax.axvline(row["round"] - 0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02),
           title="Accuracy per experience (dashed: next experience begins)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_continual(rows: list[dict], folder: Path) -> None:
    if rows and "experience_accuracy" in rows[-1]:
        plot_accuracy_matrix(rows[-1]["accuracy_matrix"], folder / "accuracy_matrix.png")
        plot_experience_accuracy(rows, folder / "experiences.png")
