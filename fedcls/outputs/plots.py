"""Run and study figures (fedcls.outputs.plot_style gives them one look, PNG + PDF):

- a run: global accuracy and the sites' local accuracy as a distribution weighted by each site's test
  examples (a site of 26 samples at 100% no longer pins a min-max band at 1.0), losses, experience
  boundaries for continual runs; the partition as a log-scale sites x classes heatmap with counts;
- a study: mean accuracy per round over seeds with a ±1 std band, per scenario; the degradation
  against iid with ±1 std error bars and each seed as a dot (a diverged seed shows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm

from fedcls.outputs.plot_style import (
    budget_text,
    experience_boundaries,
    line_style,
    plt,
    round_ticks,
    run_title,
    save,
    style,
)

QUANTILES = (0.1, 0.5, 0.9)  # the sites' spread: 10th percentile, median, 90th, over test examples


def weighted_quantiles(values: list[float], weights: list[float], qs=QUANTILES) -> list[float]:
    """Quantiles of `values` where each counts `weights` times (a site's accuracy, its test examples)."""
    return [float(q) for q in np.quantile(np.asarray(values, float), qs, weights=np.asarray(weights, float),
                                          method="inverted_cdf")]


def site_spread(rows: list[dict]) -> tuple[np.ndarray, str] | None:
    """Per round the sites' accuracy at QUANTILES weighted by test examples (rows with "sites"), else
    the min/mean/max of older rows; with the legend text that says which."""
    if all(r.get("sites") for r in rows):
        spread = [weighted_quantiles([s["accuracy"] for s in r["sites"].values()],
                                     [s["examples"] for s in r["sites"].values()]) for r in rows]
        return np.array(spread), "sites' local test, weighted by test examples: median, 10-90%"
    if rows and all("accuracy_min" in r["clients"] for r in rows):
        keys = ("accuracy_min", "accuracy_mean", "accuracy_max")
        return np.array([[r["clients"][k] for k in keys] for r in rows]), "sites' local test: mean, min-max"
    return None


def plot_accuracy(rows: list[dict], path: Path, title: str = "") -> None:
    """Global test accuracy with the sites' spread, and the losses, per round."""
    rounds = [r["round"] for r in rows]
    with style():
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        ax_acc.plot(rounds, [r["accuracy"] for r in rows], color="C0", **line_style(0, len(rows)),
                    label="global test set")
        if (spread := site_spread(rows)) is not None:
            values, label = spread
            ax_acc.fill_between(rounds, values[:, 0], values[:, 2], color="C1", alpha=0.2)
            ax_acc.plot(rounds, values[:, 1], color="C1", **line_style(1, len(rows)), label=label)
        ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
        ax_loss.plot(rounds, [r["loss"] for r in rows], color="C0", **line_style(0, len(rows)),
                     label="global test loss")
        if rows and "train_loss" in rows[0]["train"]:
            ax_loss.plot(rounds, [r["train"].get("train_loss") for r in rows], color="C2",
                         **line_style(2, len(rows)), label="sites' mean train loss")
        ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
        for ax in (ax_acc, ax_loss):
            round_ticks(ax, rounds[-1])
            experience_boundaries(ax, rows)
            ax.legend()
        if title:
            fig.suptitle(title)
        save(fig, path)


def megabytes_so_far(rows: list[dict]) -> np.ndarray:
    """Cumulative megabytes to and from the sites after each round (fedcls.apps.traffic)."""
    per_round = [sum(r.get("bytes", {}).values()) / 1e6 for r in rows]
    return np.cumsum(per_round)


def plot_accuracy_vs_traffic(rows: list[dict], path: Path, title: str = "") -> None:
    """Global test accuracy against the megabytes sent to and received from the sites so far."""
    with style():
        fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
        ax.plot(megabytes_so_far(rows), [r["accuracy"] for r in rows], color="C0", **line_style(0, len(rows)),
                label="global test set")
        ax.set(xlabel="megabytes to and from the sites so far", ylabel="accuracy", ylim=(0, 1.02),
               title=title or "Accuracy against communication")
        ax.legend()
        save(fig, path)


def plot_partition(counts: list[list[int]], path: Path, title: str = "") -> None:
    """Samples per site and class on a log colour scale (a site with 3 samples of a class is not
    drawn as empty), the count in each cell when they fit, each site's total on the right."""
    data = np.asarray(counts)
    n_sites, n_classes = data.shape
    with style():
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n_classes + 2.5), max(2.5, min(0.32 * n_sites + 1.5, 14))),
                               constrained_layout=True)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # zero samples
        image = ax.imshow(np.ma.masked_equal(data, 0), aspect="auto", cmap=cmap, interpolation="nearest",
                          norm=LogNorm(vmin=1, vmax=max(int(data.max()), 2)))
        if n_sites * n_classes <= 400:
            for (i, j), value in np.ndenumerate(data):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=6, in_layout=False,
                            color="black" if value > data.max() ** 0.6 else "white")  # inside the axes: layout
                    # and the tight bounding box need not measure each cell's text (0.7 s of a run's plots)
        ax.set(xlabel="class", ylabel="site", xticks=range(n_classes), title=title or "samples per site and class")
        ax.grid(False)
        if n_sites <= 40:
            ax.set_yticks(range(n_sites))
            totals = ax.secondary_yaxis("right")
            totals.set_yticks(range(n_sites), [str(t) for t in data.sum(1)])
            totals.set_ylabel("samples at the site")
        fig.colorbar(image, ax=ax, label="samples (log scale; white: none)", pad=0.1)
        save(fig, path)


def plot_run(rows: list[dict], counts: list[list[int]], folder: Path, cfg: dict | None = None,
             extras: dict | None = None) -> None:
    """A run's figures into `folder`; `cfg` (a config dict) names them, `extras` (the summary's
    continual entry) names each experience's classes."""
    folder.mkdir(parents=True, exist_ok=True)
    title = run_title(cfg) if cfg else ""
    if rows:
        plot_accuracy(rows, folder / "accuracy.png", title)
    if rows and all("bytes" in r for r in rows):
        plot_accuracy_vs_traffic(rows, folder / "traffic.png", title)
    if counts:
        plot_partition(counts, folder / "partition.png", title)
    if rows and "experience_accuracy" in rows[-1]:
        from fedcls.outputs.continual_plots import plot_continual

        plot_continual(rows, folder, title, (extras or {}).get("continual") or {})


def study_title(scenario: str, cfg: dict | None, seeds: list[int]) -> str:
    """The scenario, dataset and budget, and how many seeds the means are over (2-3: cells differ)."""
    budget = f"{cfg['dataset']}, {budget_text(cfg)}, " if cfg else ""
    lo, hi = min(seeds), max(seeds)
    return f"{scenario}: {budget}mean of {lo if lo == hi else f'{lo}-{hi}'} seed{'s' if hi != 1 else ''}"


def plot_study_accuracy(cells, strategies: list[str], scenario: str, path: Path) -> None:
    """Accuracy vs round in one scenario: a line per strategy, the mean over seeds with a ±1 std band."""
    present = [s for s in strategies if (s, scenario) in cells]
    seeds = [len(cells[(s, scenario)].curves) for s in present]
    with style():
        fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
        last = 1
        for i, strategy in enumerate(present):
            curves = cells[(strategy, scenario)].curves
            length = min(map(len, curves))
            data = np.array([c[:length] for c in curves])
            rounds = np.arange(1, length + 1)
            mean = data.mean(0)
            std = data.std(0, ddof=1) if len(data) > 1 else np.zeros(length)
            (line,) = ax.plot(rounds, mean, color=f"C{i}", **line_style(i, length), label=strategy)
            ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            last = max(last, length)
        ax.set(xlabel="round", ylabel="global test accuracy", ylim=(0, 1.02),
               title=study_title(scenario, cells[(present[0], scenario)].cfg, seeds))
        round_ticks(ax, last)
        band = "shaded: ±1 std over seeds" if max(seeds) > 1 else "one seed"
        ax.legend(ncol=2, title=f"strategy (line: mean; {band})", title_fontsize=8)
        save(fig, path)


def plot_study_traffic(cells, strategies: list[str], scenario: str, path: Path) -> bool:
    """Accuracy against megabytes so far in one scenario, a line per strategy (means over the seeds
    that counted bytes); False (nothing drawn) when no run of the scenario counted them."""
    present = [s for s in strategies if cells.get((s, scenario)) and cells[(s, scenario)].megabytes]
    if not present:
        return False
    with style():
        fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
        for i, strategy in enumerate(present):
            cell = cells[(strategy, scenario)]
            pairs = [(m, c) for m, c in zip(cell.megabytes, cell.curves)]
            length = min(min(len(m), len(c)) for m, c in pairs)
            mb = np.mean([m[:length] for m, _ in pairs], axis=0)
            acc = np.mean([c[:length] for _, c in pairs], axis=0)
            ax.plot(mb, acc, color=f"C{i}", **line_style(i, length), label=strategy)
        ax.set(xlabel="megabytes to and from the sites so far", ylabel="global test accuracy", ylim=(0, 1.02),
               title=study_title(scenario, cells[(present[0], scenario)].cfg,
                                 [len(cells[(s, scenario)].megabytes) for s in present]))
        ax.legend(ncol=2, title="line: mean over seeds", title_fontsize=8)
        save(fig, path)
    return True


def plot_degradation(cells, strategies, scenarios, degradation, path: Path) -> None:
    """Grouped bars: points lost against iid per scenario and strategy (mean over seeds); error bars:
    the std over seeds of the difference, sqrt(std_scenario^2 + std_iid^2) (seeds drawn
    independently); dots: each seed's loss against the iid mean, so a diverged seed shows."""
    shown = [c for c in scenarios if c != "iid"]
    width = 0.8 / max(len(strategies), 1)
    with style():
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(shown) + 2), 4.2), constrained_layout=True)
        for i, strategy in enumerate(strategies):
            xs = [j + i * width for j in range(len(shown))]
            values = [degradation(cells, strategy, c) for c in shown]
            errors = [difference_std(cells, strategy, c) for c in shown]
            ax.bar(xs, [v or 0 for v in values], width, color=f"C{i}", label=strategy, yerr=errors, capsize=2,
                   error_kw={"elinewidth": 0.8})
            for x, scenario in zip(xs, shown):
                cell, iid = cells.get((strategy, scenario)), cells.get((strategy, "iid"))
                if cell and iid:
                    dots = [100 * (iid.mean - f) for f in cell.finals]
                    ax.scatter([x] * len(dots), dots, s=6, color="black", zorder=3,
                               label="one seed" if i == 0 and scenario == shown[0] else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown))], shown, rotation=30, ha="right")
        cfg = next((c.cfg for c in cells.values() if c.cfg), None)
        ax.set(ylabel="accuracy lost vs iid (points)",
               title="Non-IID degradation" + (f": {cfg['dataset']}, {budget_text(cfg)}" if cfg else ""))
        ax.grid(axis="x", visible=False)
        ax.legend(ncol=2, title="bar: mean over seeds, error bar: ±1 std", title_fontsize=8)
        save(fig, path)


def difference_std(cells, strategy: str, scenario: str) -> float:
    """Std over seeds, in points, of a scenario's mean accuracy minus iid's (0 when one is missing)."""
    pair = [cells.get((strategy, scenario)), cells.get((strategy, "iid"))]
    return 0.0 if None in pair else 100 * (pair[0].std ** 2 + pair[1].std ** 2) ** 0.5


def plot_study(cells, strategies, scenarios, folder: Path, degradation) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for scenario in scenarios:
        plot_study_accuracy(cells, strategies, scenario, folder / f"accuracy_{scenario}.png")
        plot_study_traffic(cells, strategies, scenario, folder / f"traffic_{scenario}.png")
        cell = next((cells[(s, scenario)] for s in strategies
                     if (s, scenario) in cells and cells[(s, scenario)].partition), None)
        if cell:
            title = f"{scenario}: samples per site and class" + (f" ({cell.cfg['dataset']}, seed "
                                                                 f"{cell.cfg['seed']})" if cell.cfg else "")
            plot_partition(cell.partition, folder / f"partition_{scenario}.png", title)
    if "iid" in scenarios and len(scenarios) > 1:
        plot_degradation(cells, strategies, scenarios, degradation, folder / "degradation.png")
