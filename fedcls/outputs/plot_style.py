"""One look for every fedcls figure (runs, studies, continual): the style, PNG and PDF side by side,
round ticks that include round 1 and the last, markers and line styles that keep overlapping
methods apart, titles that name dataset, partition, strategy and budget."""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "savefig.bbox": "tight"}
MARKERS = "os^Dv<>pP*Xh"
LINESTYLES = ("-", "--", "-.", ":")


@contextlib.contextmanager
def style():
    """Every fedcls figure is drawn inside this."""
    with plt.rc_context(STYLE):
        yield


_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("formats", default=("png", "pdf"))


@contextlib.contextmanager
def file_formats(kinds: tuple[str, ...]):
    """Within: save() writes only these of png and pdf (a run's `plots` key)."""
    token = _FORMATS.set(tuple(kinds))
    try:
        yield
    finally:
        _FORMATS.reset(token)


def save(fig, path: Path) -> None:
    """`path` as PNG (for the README and a quick look) and PDF (vector, for a paper), or what
    file_formats allows; closes `fig`. Drawing the PDF takes about as long as the PNG."""
    path = Path(path)
    if "png" in _FORMATS.get():
        fig.savefig(path.with_suffix(".png"), dpi=150)
    if "pdf" in _FORMATS.get():
        fig.savefig(path.with_suffix(".pdf"), metadata={"CreationDate": None})  # same figure, same bytes (git)
    plt.close(fig)


def round_ticks(ax, last: int) -> None:
    """Whole-number round ticks that always include round 1 and the last round."""
    ticks = [t for t in MaxNLocator(integer=True, nbins=6).tick_values(1, last) if 1 < t < last]
    ticks = [t for t in ticks if last - t >= 0.08 * last]  # not crowding the last round's label
    ax.set_xticks(sorted({1, *map(int, ticks), last}))
    ax.set_xlim(0.5, last + 0.5)


def experience_boundaries(ax, rows: list[dict]) -> None:
    """Dashed lines where a continual federation moves to its next experience."""
    for prev, row in zip(rows, rows[1:]):
        if "experience" in row and row["experience"] != prev.get("experience"):
            ax.axvline(row["round"] - 0.5, color="grey", ls="--", lw=0.8)


def line_style(i: int, length: int) -> dict:
    """The i-th method's marker and line style (markers about 10 per line, not on every round)."""
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "markevery": max(1, length // 10), "markersize": 4}


def partition_text(partition: dict) -> str:
    """A partition as papers write it: Dir(0.1), #C=2, quantity Dir(0.5), ..."""
    kind = partition.get("kind", "iid")
    return {"dirichlet": f"Dir({partition.get('alpha')})", "label_k": f"#C={partition.get('k')}",
            "quantity": f"quantity Dir({partition.get('alpha')})", "noise": f"noise σ={partition.get('sigma')}",
            "shards": f"{partition.get('shards_per_client')} shards per site"}.get(kind, kind)


def budget_text(cfg: dict) -> str:
    return f"{cfg['num_clients']} sites, {cfg['rounds']} rounds × {cfg['local_epochs']} local epochs"


def run_title(cfg: dict) -> str:
    """dataset · scenario (partition) · strategy · model · budget · seed, from a config dict."""
    scenario = cfg.get("scenario") or Path(cfg.get("scenario_file") or "").stem or "custom"
    return (f"{cfg['dataset']} · {scenario} ({partition_text(cfg['partition'])}) · {cfg['strategy']['name']} · "
            f"{cfg['model']['name']}\n{budget_text(cfg)} · seed {cfg['seed']}")
