"""The command line, as a user meets it: a subprocess, its exit code and what it prints."""

import yaml


def test_help_lists_scenarios_strategies_datasets_models_and_keys(cli):
    out = cli("--help")
    assert out.returncode == 0
    for word in ("dirichlet_0.1", "label_2", "fedprox", "strategy.proximal_mu=0.01", "mnist5k",
                 "cifar10", "simple_cnn", "vit_tiny", "partition:", "backend:", "ray_address"):
        assert word in out.stdout, word


def test_cfg_job_prints_the_resolved_config_and_runs_nothing(cli, tmp_path):
    out = cli("scenario=iid", "rounds=3", f"output_dir={tmp_path}", "--cfg", "job")
    assert out.returncode == 0
    cfg = yaml.safe_load(out.stdout)
    assert cfg["partition"]["kind"] == "iid" and cfg["rounds"] == 3 and cfg["strategy"]["name"] == "fedavg"
    assert list(tmp_path.iterdir()) == []


def test_unknown_scenario_exits_2_with_the_closest_match_and_no_traceback(cli):
    out = cli("scenario=dirichlet_01")
    assert out.returncode == 2
    assert "Did you mean 'dirichlet_0.1'" in out.stderr and "label_2" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_impossible_value_is_one_line_naming_the_key(cli):
    out = cli("scenario=dirichlet_0.1", "partition.alpha=0")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: partition.alpha must be > 0, got 0.0"


def test_unknown_strategy_and_unknown_key(cli):
    out = cli("strategy=fedavgg")
    assert out.returncode == 2 and "Did you mean 'fedavg'" in out.stderr
    out = cli("local_epoch=3")
    assert out.returncode == 2 and "Did you mean 'local_epochs'" in out.stderr


def test_missing_torchvision_data_exits_2_naming_the_path(cli, tmp_path):
    out = cli("dataset=mnist", f"data.root={tmp_path}", "data.download=false",
              f"output_dir={tmp_path / 'runs'}")
    assert out.returncode == 2
    assert str(tmp_path / "MNIST" / "raw") in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_help_piped_into_a_reader_that_stops_early_ends_without_a_traceback():
    import subprocess
    import sys

    from conftest import ROOT

    # the reader takes one line and goes away, as `python -m fedcls.simulate --help | head -1` does
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('x' * 70000 + '\\n')"
                             "; from fedcls.simulate import main; sys.exit(main(['--help']))"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # the pipe breaks while the help is still being written
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in (err := proc.stderr.read()) and "BrokenPipe" not in err


def test_flowers_telemetry_is_off_unless_the_environment_turns_it_on():
    """fedcls sets FLWR_TELEMETRY_ENABLED=0 before Flower reads it; an explicit 1 is kept."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    code = "import fedcls, flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)"
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    seen = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra}, capture_output=True,
                           text=True, check=True).stdout.strip() for extra in ({}, {"FLWR_TELEMETRY_ENABLED": "1"})]
    assert seen == ["0", "1"]
