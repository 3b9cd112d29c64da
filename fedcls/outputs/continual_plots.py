"""Continual-run figures: the accuracy matrix (experiences not yet seen are masked, not drawn as
0.00) and accuracy per experience vs round (each experience drawn from the round it begins), both
naming each experience's classes or domain, with the experience boundaries marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcls.outputs.plot_style import experience_boundaries, line_style, plt, round_ticks, save, style


def experience_names(count: int, continual: dict) -> list[str]:
    """'exp 1: classes 6, 8' (class-incremental) or 'exp 2: rotate:60' (domain-incremental)."""
    classes, domains = continual.get("classes"), continual.get("domains")
    names = []
    for j in range(count):
        if classes and j < len(classes):
            detail = ": classes " + ", ".join(map(str, classes[j]))
        elif domains:
            detail = f": {domains[j % len(domains)]}"
        else:
            detail = ""
        names.append(f"exp {j + 1}{detail}")
    return names


def plot_accuracy_matrix(matrix: list[list[float]], path: Path, names: list[str], title: str = "") -> None:
    """Row i: after training experience i; column j: test set of experience j; the cells above the
    diagonal (experiences not yet seen) masked."""
    data = np.array(matrix, float)
    n_rows, n_cols = data.shape
    seen = np.tril(np.ones_like(data, bool), k=0)[:, :n_cols]
    with style():
        fig, ax = plt.subplots(figsize=(1.2 * n_cols + 2.5, 0.8 * n_rows + 1.8), constrained_layout=True)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")  # not seen yet
        image = ax.imshow(np.ma.masked_where(~seen, data), vmin=0, vmax=1, cmap=cmap)
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, f"{value:.2f}" if seen[i, j] else "not seen", ha="center", va="center", fontsize=8,
                    color="grey" if not seen[i, j] else "black" if value > 0.6 else "white")
        ax.set_xticks(range(n_cols), [n.replace(": ", "\n") for n in names[:n_cols]])
        ax.set_yticks(range(n_rows), [f"after exp {i + 1}" for i in range(n_rows)])
        ax.set(xlabel="test set of experience", title=title or "Accuracy matrix")
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="accuracy")
        save(fig, path)


def plot_experience_accuracy(rows: list[dict], path: Path, names: list[str], title: str = "") -> None:
    """Global accuracy and each experience's accuracy per round, each experience from the round the
    federation reaches it (before that it is not seen, not at 0); dashed: the next experience begins."""
    rounds = [r["round"] for r in rows]
    with style():
        fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
        ax.plot(rounds, [r["accuracy"] for r in rows], color="black", lw=2, label="global test set")
        for j in range(len(rows[0]["experience_accuracy"])):
            values = [r["experience_accuracy"][j] if r["experience"] >= j else np.nan for r in rows]
            ax.plot(rounds, values, color=f"C{j}", lw=1.2, **line_style(j + 1, len(rows)), label=names[j])
        experience_boundaries(ax, rows)
        ax.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02),
               title=(title + "\n" if title else "") + "Accuracy per experience (dashed: the next experience begins)")
        round_ticks(ax, rounds[-1])
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, path)


def plot_continual(rows: list[dict], folder: Path, title: str = "", continual: dict | None = None) -> None:
    if rows and "experience_accuracy" in rows[-1]:
        names = experience_names(len(rows[-1]["experience_accuracy"]), continual or {})
        plot_accuracy_matrix(rows[-1]["accuracy_matrix"], folder / "accuracy_matrix.png", names, title)
        plot_experience_accuracy(rows, folder / "experiences.png", names, title)
