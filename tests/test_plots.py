"""Figures a paper can use (fedcls.outputs.plots, continual_plots, plot_style): checked on the
figures' own artists (each plotting call's figure is caught before it is saved and closed)."""

import numpy as np
import pytest
from matplotlib.colors import LogNorm

from fedcls.config import compose
from fedcls.outputs import continual_plots, plots
from fedcls.outputs.plot_style import round_ticks, run_title


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """The figures the plotting functions make, in order, saved as PNG and PDF under tmp_path."""
    from fedcls.outputs import plot_style

    made = []

    def keep(fig, path):
        made.append(fig)
        fig.savefig(path.with_suffix(".png"))
        fig.savefig(path.with_suffix(".pdf"))

    for module in (plots, continual_plots):
        monkeypatch.setattr(module, "save", keep)
    yield made
    for fig in made:
        plot_style.plt.close(fig)


def test_the_sites_spread_is_weighted_by_test_examples_so_a_tiny_perfect_site_does_not_pin_it():
    # sorted: 0.5 x 1000 examples, 0.9 x 500, 1.0 x 26 (of 1526): the 10% and 50% points fall in the
    # first 1000, the 90% point (1373.4) in the next 500; the 26-sample site at 100% is above it
    assert plots.weighted_quantiles([1.0, 0.5, 0.9], [26, 1000, 500]) == [0.5, 0.5, 0.9]
    rows = [{"clients": {}, "sites": {"0": {"accuracy": 1.0, "examples": 26}, "1": {"accuracy": 0.5, "examples": 1000},
                                      "2": {"accuracy": 0.9, "examples": 500}}}]
    spread, label = plots.site_spread(rows)
    assert spread.tolist() == [[0.5, 0.5, 0.9]] and "weighted by test examples" in label
    old = [{"clients": {"accuracy_min": 0.2, "accuracy_mean": 0.5, "accuracy_max": 1.0}}]  # runs before "sites"
    assert plots.site_spread(old)[0].tolist() == [[0.2, 0.5, 1.0]] and "min-max" in plots.site_spread(old)[1]


@pytest.mark.parametrize("last", [1, 2, 7, 18, 20, 30, 200])
def test_round_ticks_include_round_1_and_the_last_round(last):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    round_ticks(ax, last)
    ticks = list(ax.get_xticks())
    plt.close(fig)
    assert ticks[0] == 1 and ticks[-1] == last and ticks == sorted(set(ticks))
    assert all(float(t).is_integer() for t in ticks) and len(ticks) <= 8


def test_a_run_figure_names_dataset_partition_strategy_and_budget_and_marks_experiences(figures, tmp_path):
    cfg = compose(["scenario=dirichlet_0.1", "strategy=fedprox", "rounds=4", "local_epochs=3"]).to_dict()
    assert run_title(cfg) == ("mnist5k · dirichlet_0.1 (Dir(0.1)) · fedprox · simple_cnn\n"
                              "10 sites, 4 rounds × 3 local epochs · seed 0")
    rows = [{"round": r, "accuracy": 0.1 * r, "loss": 1.0 / r, "train": {"train_loss": 1.0}, "clients": {},
             "experience": (r - 1) // 2, "sites": {"0": {"accuracy": 0.5, "examples": 10}}} for r in (1, 2, 3, 4)]
    plots.plot_accuracy(rows, tmp_path / "accuracy.png", run_title(cfg))
    (fig,) = figures
    assert fig._suptitle.get_text() == run_title(cfg)
    acc = fig.axes[0]
    assert [line.get_marker() for line in acc.lines[:2]] == ["o", "s"]
    boundaries = [line for line in acc.lines if line.get_linestyle() == "--" and line.get_color() == "grey"]
    assert [line.get_xdata()[0] for line in boundaries] == [2.5]  # experience 1 -> 2 between rounds 2 and 3
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "accuracy.pdf").exists()


def test_the_partition_heatmap_is_log_scaled_with_counts_and_each_sites_total(figures, tmp_path):
    counts = [[3, 0, 400], [1, 50, 0]]
    plots.plot_partition(counts, tmp_path / "partition.png", "title")
    (fig,) = figures
    ax = fig.axes[0]
    assert isinstance(ax.images[0].norm, LogNorm) and ax.get_ylabel() == "site"
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "400", "50"]  # zeros left blank
    totals = next(a for a in ax.child_axes)
    assert [t.get_text() for t in totals.get_yticklabels()] == ["403", "51"]


def test_study_lines_differ_in_marker_and_style_and_the_legend_says_what_the_band_is(figures, tmp_path):
    from fedcls.studies.report import Cell

    cfg = compose(["scenario=iid"]).to_dict()
    cells = {(s, "iid"): Cell(finals=[0.9, 0.8], curves=[[0.5, 0.9], [0.4, 0.8]], cfg=cfg) for s in ("a", "b", "c")}
    plots.plot_study_accuracy(cells, ["a", "b", "c"], "iid", tmp_path / "acc.png")
    (fig,) = figures
    ax = fig.axes[0]
    styles = {(line.get_marker(), line.get_linestyle()) for line in ax.lines}
    assert len(styles) == 3
    assert "±1 std over seeds" in ax.get_legend().get_title().get_text()
    assert "mnist5k, 10 sites, 20 rounds × 10 local epochs, mean of 2 seeds" in ax.get_title()
    assert plots.study_title("iid", None, [2, 3, 3]) == "iid: mean of 2-3 seeds"


def test_degradation_bars_show_every_seed_so_a_diverged_one_is_visible(figures, tmp_path):
    from fedcls.studies.report import Cell, degradation

    cells = {("a", "iid"): Cell(finals=[0.9, 0.9, 0.9]), ("a", "label_2"): Cell(finals=[0.8, 0.8, 0.1])}
    plots.plot_degradation(cells, ["a"], ["iid", "label_2"], degradation, tmp_path / "deg.png")
    (fig,) = figures
    from matplotlib.collections import PathCollection

    dots = np.concatenate([c.get_offsets()[:, 1] for c in fig.axes[0].collections if isinstance(c, PathCollection)])
    assert sorted(dots) == pytest.approx([10.0, 10.0, 80.0])  # points lost by each seed against iid's mean


def test_continual_figures_mask_unseen_experiences_and_name_their_classes(figures, tmp_path):
    names = continual_plots.experience_names(3, {"classes": [[6, 8], [5, 9], [1, 3]]})
    assert names == ["exp 1: classes 6, 8", "exp 2: classes 5, 9", "exp 3: classes 1, 3"]
    assert continual_plots.experience_names(2, {"domains": ["rotate:0", "rotate:60"]})[1] == "exp 2: rotate:60"
    matrix = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]]
    continual_plots.plot_accuracy_matrix(matrix, tmp_path / "m.png", names)
    rows = [{"round": r, "accuracy": 0.5, "experience": r - 1, "experience_accuracy": matrix[r - 1]} for r in (1, 2, 3)]
    continual_plots.plot_experience_accuracy(rows, tmp_path / "e.png", names)
    matrix_fig, rounds_fig = figures
    texts = [t.get_text() for t in matrix_fig.axes[0].texts]
    assert texts.count("not seen") == 3 and "0.00" not in texts
    assert [t.get_text() for t in matrix_fig.axes[0].get_xticklabels()][0] == "exp 1\nclasses 6, 8"
    third = next(line for line in rounds_fig.axes[0].lines if line.get_label() == names[2])
    assert np.isnan(third.get_ydata()[:2]).all() and third.get_ydata()[2] == 0.7  # drawn from round 3 on


def test_a_runs_plots_key_picks_the_files_its_figures_become(tmp_path):
    from fedcls.outputs.results import Recorder
    from fedcls.studies.sweep import point_config

    rows = [{"round": 1, "accuracy": 0.5, "loss": 1.0, "train": {}, "clients": {}, "sampled": 2, "failures": [],
             "seconds": 1.0, "started_at": 0.0}]
    made = {}
    for kind in ("png+pdf", "png", "none"):
        recorder = Recorder(tmp_path / kind, compose(["num_clients=2", f"plots={kind}"]), echo=lambda line: None)
        recorder.rows, recorder.partition_counts = rows, [[3, 1], [0, 4]]
        recorder.finish()
        plots_dir = tmp_path / kind / "plots"
        made[kind] = sorted(p.name for p in plots_dir.iterdir()) if plots_dir.exists() else []
    assert made == {"png+pdf": ["accuracy.pdf", "accuracy.png", "partition.pdf", "partition.png"],
                    "png": ["accuracy.png", "partition.png"], "none": []}
    # a sweep's runs draw PNGs (their study's report draws the PDFs) unless the command says otherwise
    assert point_config([], ["seed=0"], tmp_path).plots == "png"
    assert point_config(["plots=png+pdf"], ["seed=0"], tmp_path).plots == "png+pdf"
    assert compose([]).plots == "png+pdf"


def test_a_sweeps_runs_draw_their_plots_in_another_process_all_done_on_leaving(tmp_path, monkeypatch, capfd):
    from fedcls.outputs import results
    from fedcls.outputs.results import Recorder, plots_in_background

    rows = [{"round": 1, "accuracy": 0.5, "loss": 1.0, "train": {}, "clients": {}, "sampled": 2, "failures": [],
             "seconds": 1.0, "started_at": 0.0}]

    def not_here(*args):
        raise AssertionError("drawn in the sweep's own process")

    monkeypatch.setattr(results, "draw_plots", not_here)  # this process only: the plotting process has its own
    with plots_in_background():
        for name in ("a", "broken", "b"):
            recorder = Recorder(tmp_path / name, compose(["num_clients=2", "plots=png"]), echo=lambda line: None)
            recorder.rows = rows
            recorder.partition_counts = [[3, 1], [0, 4]] if name != "broken" else [[3, 1], [0]]  # ragged: fails
            assert recorder.finish()["status"] == "completed"
    for name in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / name / "plots").iterdir()) == ["accuracy.png", "partition.png"]
    assert f"the plots of {tmp_path / 'broken'} were not drawn: ValueError" in capfd.readouterr().err
    assert results._PLOTTERS == []
