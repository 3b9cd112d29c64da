"""The ``fedcls`` console script (fedcls.cli, ``python -m fedcls``) and scenarios as package data."""

import importlib
import subprocess
import sys
from importlib import resources

import pytest
import yaml

from fedcls import cli, simulate
from fedcls.config import SCENARIO_DIR, compose


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"], ["help"]])
def test_no_command_or_help_lists_every_command_on_its_own_line(argv, capsys):
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("simulate", "sweep", "report", "prepare-sites", "certs"):
        assert sum(line.split()[:1] == [name] for line in lines) == 1, name


def test_an_unknown_command_names_the_closest_one_and_exits_2(capsys):
    assert cli.main(["simulat", "scenario=iid"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'simulat'" in err and "Did you mean 'simulate'?" in err


def test_simulate_cfg_job_prints_the_same_config_as_python_m_fedcls_simulate(capsys):
    args = ["scenario=dirichlet_0.1", "num_clients=4", "--cfg", "job"]
    assert cli.main(["simulate", *args]) == 0
    via_cli = capsys.readouterr().out
    assert simulate.main(args) == 0
    assert via_cli == capsys.readouterr().out
    cfg = yaml.safe_load(via_cli)
    assert (cfg["scenario"], cfg["partition"]["alpha"], cfg["num_clients"]) == ("dirichlet_0.1", 0.1, 4)


def test_help_command_shows_that_commands_own_help(capsys):
    assert cli.main(["help", "sweep"]) == 0
    assert "python -m fedcls.sweep name=STUDY" in capsys.readouterr().out


def test_every_command_runs_a_module_with_a_main():
    for name, (module, summary) in cli.COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        assert len(f"  {name}  {summary}") <= 100, name


def test_the_command_list_loads_no_tool_and_python_m_fedcls_dispatches():
    code = ("import sys; from fedcls.cli import main; main(['--help']); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'flwr', 'fedcls.simulate', 'fedcls.config')))")
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.strip().endswith("[]"), listed.stderr
    unknown = subprocess.run([sys.executable, "-m", "fedcls", "sweeep"], capture_output=True, text=True,
                             timeout=60)
    assert unknown.returncode == 2 and "Did you mean 'sweep'?" in unknown.stderr


def test_scenarios_are_found_in_their_package_and_by_path(tmp_path):
    import scenarios

    assert SCENARIO_DIR.samefile(resources.files(scenarios))
    assert (SCENARIO_DIR / "dirichlet_0.1.yaml").is_file()
    mine = tmp_path / "mine.yaml"
    mine.write_text("partition:\n  kind: dirichlet\n  alpha: 0.3\nnum_clients: 3\n")
    cfg = compose([f"scenario_file={mine}"])
    assert (cfg.partition.alpha, cfg.num_clients) == (0.3, 3)
