"""The privacy and communication tables of a study (``python -m fedcls.report``): per setting
(differential privacy kind and noise, update compression), the final global accuracy, the epsilon
spent (central DP: the run's; DP-SGD: the largest site's) and the megabytes to and from the sites,
mean ± std over seeds; plots of accuracy against epsilon and against megabytes. Written only for
studies whose runs differ in ``privacy`` or ``compression`` settings."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from fedcls.outputs.plot_style import line_style, plt, save, style
from fedcls.studies.tables import completed_runs, flat

KEYS = ("privacy.", "compression.")


def setting(cfg: dict) -> str:
    """'no DP, none' / 'central DP z=0.1 C=1' / 'DP-SGD z=1 C=1' / 'topk 1%' ..., from the config."""
    p, c = cfg.get("privacy", {}), cfg.get("compression", {})
    dp = p.get("dp", "none")
    parts = []
    if dp != "none":
        name = {"central": "central DP", "client_clipping": "central DP (site clipping)", "dpsgd": "DP-SGD"}[dp]
        noise = (f"target eps {p['target_epsilon']:g}" if dp == "dpsgd" and p.get("target_epsilon")
                 else f"z={p['noise_multiplier']:g}")
        parts.append(f"{name} {noise} C={p['clipping_norm']:g}")
    if p.get("secagg"):
        parts.append("SecAgg+")
    kind = c.get("kind", "none")
    if kind != "none":
        parts.append(f"topk {c['topk_fraction'] * 100:g}%" if kind == "topk" else kind)
    return ", ".join(parts) or "none"


def _group(runs) -> dict[str, list[tuple[dict, dict]]]:
    groups: dict[str, list] = {}
    for cfg, summary in runs:
        groups.setdefault(setting(cfg), []).append((cfg, summary))
    return groups


def _mean_std(values: list[float], pattern: str = "{:.1f}", scale: float = 1.0) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if pattern != "{:.1f}" and max(values) - min(values) <= 0.01 * abs(max(values)):  # epsilon: the same
        return pattern.format(scale * statistics.fmean(values))  # for every seed, up to its search's tolerance
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{pattern.format(scale * statistics.fmean(values))} ± {pattern.format(scale * std)}"


def epsilon(summary: dict) -> float | None:
    """The run's epsilon (DP-SGD: its most-spent site's); None without a guarantee."""
    return (summary.get("privacy") or {}).get("epsilon")


def megabytes(summary: dict) -> tuple[float, float]:
    b = summary.get("bytes") or {}
    return b.get("to_sites", 0) / 1e6, b.get("from_sites", 0) / 1e6


def markdown(groups: dict) -> str:
    lines = ["### Privacy and communication (mean ± std over seeds)", "",
             "| setting | seeds | final accuracy, % | epsilon (delta) | MB to sites | MB from sites |",
             "|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        summaries = [s for _, s in runs]
        eps = [epsilon(s) for s in summaries]
        deltas = {(s.get("privacy") or {}).get("delta") for s in summaries} - {None}
        eps_text = ("no guarantee" if all(e is None for e in eps)
                    else f"{_mean_std(eps, '{:.3g}')} ({', '.join(f'{d:g}' for d in sorted(deltas))})")
        to, back = zip(*(megabytes(s) for s in summaries))
        lines.append(f"| {name} | {len(runs)} | {_mean_std([s['final_accuracy'] for s in summaries], scale=100)} | "
                     f"{eps_text} | {statistics.fmean(to):.1f} | {statistics.fmean(back):.1f} |")
    note = ("epsilon: central DP, the whole run's (user level, RDP, no sampling amplification); DP-SGD, the "
            "largest over the sites (sample level). No guarantee: no noise. MB: all messages of the run, "
            "training and evaluation, as sent (fedcls.apps.traffic).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot_privacy(groups: dict, path: Path) -> None:
    """Final accuracy against epsilon (log scale), a line per DP kind, ±1 std over seeds."""
    kinds: dict[str, list[tuple[float, float, float]]] = {}
    baseline = None
    for name, runs in groups.items():
        accs = [s["final_accuracy"] for _, s in runs]
        eps = [e for _, s in runs if (e := epsilon(s)) is not None]
        dp = runs[0][0].get("privacy", {}).get("dp", "none")
        compressed = runs[0][0].get("compression", {}).get("kind", "none") != "none"
        if dp == "none" and not compressed:
            baseline = statistics.fmean(accs)
        elif dp != "none" and eps:
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            kinds.setdefault(name.split(" z=")[0].split(" target")[0], []).append(
                (statistics.fmean(eps), statistics.fmean(accs), std))
    if not kinds:
        return
    with style():
        fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
        for i, (kind, points) in enumerate(sorted(kinds.items())):
            points.sort()
            x, y, err = zip(*points)
            level = " (a site's samples)" if kind.startswith("DP-SGD") else " (a site's whole data)"
            ax.errorbar(x, y, yerr=err, capsize=3, label=kind + level, color=f"C{i}", **line_style(i, len(x)))
        if baseline is not None:
            ax.axhline(baseline, color="0.4", linestyle="--", linewidth=1, label="no DP")
        ax.set(xscale="log", xlabel="epsilon spent over the run (log scale)", ylabel="final global accuracy",
               ylim=(0, 1.02))
        ax.legend(title="mean over seeds, bar: ±1 std")
        save(fig, path)


def plot_communication(groups: dict, rows_of, path: Path) -> None:
    """Global accuracy against the megabytes the sites have sent so far (log scale: what compression
    shrinks; the global model goes out whole), a line per setting without DP."""
    import numpy as np

    def uplink(rows: list[dict]) -> np.ndarray:
        return np.cumsum([r.get("bytes", {}).get("from_sites", 0) / 1e6 for r in rows])

    lines = {name: runs for name, runs in groups.items() if runs[0][0].get("privacy", {}).get("dp", "none") == "none"}
    if len(lines) < 2:
        return
    with style():
        fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
        for i, (name, runs) in enumerate(lines.items()):
            curves = [rows_of(s["run_id"]) for _, s in runs]
            length = min(map(len, curves))
            mb = [statistics.fmean(float(uplink(c)[k]) for c in curves) for k in range(length)]
            acc = [statistics.fmean(c[k]["accuracy"] for c in curves) for k in range(length)]
            ax.plot(mb, acc, label=name, color=f"C{i}", **line_style(i, length))
        ax.set(xscale="log", xlabel="megabytes sent by the sites so far (log scale)",
               ylabel="global test accuracy (mean over seeds)", ylim=(0, 1.02))
        ax.legend(title="update compression")
        save(fig, path)


def write_privacy_tables(study: Path, run_dirs: list[Path]) -> bool:
    """table_privacy.md, plots/privacy_utility.*, plots/communication.*; False when the study's runs
    do not differ in privacy or compression settings."""
    import json

    runs = completed_runs(run_dirs, "final_accuracy")
    if len({tuple(v for k, v in flat(cfg).items() if k.startswith(KEYS)) for cfg, _ in runs}) < 2:
        return False
    groups = _group(runs)
    (study / "table_privacy.md").write_text(markdown(groups))
    by_id = {d.name: d for d in run_dirs}

    def rows_of(run_id: str) -> list[dict]:
        return [json.loads(line) for line in (by_id[run_id] / "metrics.jsonl").read_text().splitlines()]

    plot_privacy(groups, study / "plots" / "privacy_utility.png")
    plot_communication(groups, rows_of, study / "plots" / "communication.png")
    return True
