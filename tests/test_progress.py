"""The console while a run works (fedcls.outputs.progress): phases with times, round lines with the
time left, a live line on terminals, the headline metrics of continual and domain runs."""

import re

import pytest

from fedcls.config import compose
from fedcls.engine.runner import headline
from fedcls.outputs.progress import Progress, duration, remaining
from fedcls.outputs.results import console_line
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "rounds=3", "save_model=false"]


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_durations_read_as_people_write_them(seconds, text):
    assert duration(seconds) == text


def test_time_left_is_the_pace_of_the_rounds_after_the_first_times_the_rounds_to_go():
    assert remaining([], 5) is None
    assert remaining([30.0], 4) == 120.0  # only the first round so far: its pace
    assert remaining([30.0, 2.0, 4.0], 10) == 30.0  # (2 + 4) / 2 * 10: round 1 also started the actors


def test_plain_lines_name_each_phase_with_its_time_and_each_round_with_the_time_left():
    lines = []
    progress = Progress(3, echo=lines.append, live=False)
    progress.phase("data", "300 images")
    progress.stage(1, "training", 3)  # plain mode: no live line, nothing printed
    progress.replies(2)
    for rnd, seconds in [(1, 10.0), (2, 4.0), (3, 6.0)]:
        progress.round_done(rnd, seconds, f"round {rnd}/3")
    assert re.fullmatch(r"  data    300 images \(\d+\.\ds\)", lines[0])
    assert lines[1:] == ["round 1/3  left ~20s", "round 2/3  left ~4s", "round 3/3"]


def test_the_live_line_names_the_round_its_stage_and_the_sites_that_answered(capsys):
    progress = Progress(4, echo=print, live=True, label="[2/9] ")
    progress.round_done(1, 8.0, "round 1/4")
    progress.stage(2, "training", 10)
    progress.replies(4)  # within REFRESH_S of the stage's own draw: not redrawn yet
    progress._drawn = 0.0
    progress.replies(7)
    progress.close()
    out = capsys.readouterr().out
    assert "round 1/4  left ~24s" in out
    assert "[2/9] round 2/4" in out and "training 0/10 sites" in out and "training 7/10 sites" in out
    assert "~24s left" in out and "4/10" not in out


def test_a_federation_reports_its_sites_stages_and_rounds(tmp_path, capsys, monkeypatch):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose(SMALL)
    lines = []
    progress = Progress(cfg.rounds, echo=lines.append, live=True)
    grid = CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None)
    grid.on_replies = progress.replies
    run_federation(grid, cfg, federated_data(cfg), Recorder(tmp_path / "run", cfg, progress=progress))
    progress.close()
    assert lines[0].startswith("  sites   3 simulated sites, each node's site known (no roll call")
    assert [line.split()[1] for line in lines[1:]] == ["1/3", "2/3", "3/3"]
    assert "left ~" in lines[1] and "left ~" in lines[2] and "left" not in lines[3]
    live = capsys.readouterr().out
    for stage in ("training 0/3 sites", "evaluating at the sites 0/3 sites", "testing the global model"):
        assert stage in live


def test_round_lines_and_the_closing_line_carry_continual_and_domain_headlines():
    row = {"round": 4, "accuracy": 0.5, "loss": 1.0, "train": {}, "clients": {}, "seconds": 1.0, "failures": [],
           "experience": 1, "target_accuracy": 0.25}
    assert "target acc 0.2500" in console_line(row, 9) and "experience 2" in console_line(row, 9)
    text = headline({"average_accuracy": 0.748, "forgetting": 0.17876, "bwt": -0.17876,
                     "target_accuracy": 0.6, "targets": [3]})
    assert text == ("; average accuracy over experiences 0.7480, forgetting 0.1788, BWT -0.1788"
                    "; held-out target sites [3] accuracy 0.6000")
    assert headline({"target_accuracy": None, "targets": [3]}) == ""


def test_other_libraries_warnings_go_to_the_run_folder_and_fedcls_advice_to_the_console(tmp_path):
    import warnings

    from fedcls.algorithms.continual.ewc import EWCStabilityWarning
    from fedcls.engine.logs import warnings_to_log

    before_filters, before_show = list(warnings.filters), warnings.showwarning
    console = []
    with warnings_to_log(verbose=False) as log:
        log.console = lambda message, *rest: console.append(str(message))
        warnings.simplefilter("always")  # the filters decide what is shown at all; the log, where
        warnings.warn_explicit("jaxopt is deprecated", DeprecationWarning, "/site-packages/jaxopt/x.py", 3)
        log.into(tmp_path)  # the run folder exists now: what was held is written first
        warnings.warn_explicit("tiny batch", UserWarning, "/site-packages/torch/y.py", 9)
        warnings.warn("lower lr", EWCStabilityWarning)
    text = (tmp_path / "warnings.log").read_text()
    assert text.index("jaxopt is deprecated") < text.index("tiny batch") and "lower lr" not in text
    assert console == ["lower lr"]
    assert warnings.filters == before_filters and warnings.showwarning is before_show


def test_tensorboard_and_mlflow_hold_each_rounds_scalars_as_metrics_jsonl_says(tmp_path, monkeypatch):
    """Read back with TensorBoard's own reader (what `tensorboard --logdir` shows) and MLflow's client."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose([*SMALL, "tracking.mlflow=true", f"tracking.mlflow_uri=file:{tmp_path / 'mlruns'}"])
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg,
                   federated_data(cfg), recorder)
    recorder.finish("completed")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    expected = {"global/accuracy": [r["accuracy"] for r in rows], "global/loss": [r["loss"] for r in rows],
                "train/train_loss": [r["train"]["train_loss"] for r in rows],
                "train/num-steps": [r["train"]["num-steps"] for r in rows],
                "sites/accuracy_min": [r["clients"]["accuracy_min"] for r in rows],
                "site/2/accuracy": [r["sites"]["2"]["accuracy"] for r in rows],
                "run/failures": [0, 0, 0], "run/seconds": [r["seconds"] for r in rows]}
    for tag, values in expected.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx(values, rel=1e-6), tag  # stored as float32
    assert "config/text_summary" in events.Tags()["tensors"]
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "hparams"))
    hparams.Reload()
    assert hparams.Scalars("final/final_accuracy")[0].value == pytest.approx(rows[-1]["accuracy"])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedcls").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["strategy.name"] == "fedavg" and run.data.params["rounds"] == "3"
    for tag, values in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert history == [(step, pytest.approx(v)) for step, v in zip([1, 2, 3], values)], tag
    assert run.data.metrics["final_accuracy"] == rows[-1]["accuracy"]


def test_a_sweep_runs_round_lines_say_how_long_the_whole_grid_has_left(capsys):
    from fedcls.studies.sweep import run_progress

    progress = run_progress(compose(["rounds=3"]), "[4/9]", later_runs=600.0)  # 5 runs after this, 2 min each
    progress.round_done(1, 30.0, "round 1/3")
    progress.round_done(2, 10.0, "round 2/3")
    out = capsys.readouterr().out.splitlines()
    assert out == ["    round 1/3  left ~1m00s  grid ~11m00s left", "    round 2/3  left ~10s  grid ~10m10s left"]
    assert run_progress(compose([]), "[1/9]", later_runs=None).after(5.0) == ""  # no pace yet: no grid ETA
    first = run_progress(compose(["rounds=3"]), "[1/9]", later_runs=None)
    first.round_done(1, 30.0, "round 1/3")
    assert capsys.readouterr().out == "    round 1/3  left ~1m00s\n"
