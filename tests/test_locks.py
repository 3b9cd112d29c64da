"""One process at a time per study and per run folder (fedcls.outputs.locks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedcls.errors import UserError
from fedcls.outputs.locks import LOCK, holding
from fedcls.sweep import main as sweep_main


def test_a_held_folder_is_refused_naming_its_holder_and_freed_after(tmp_path):
    with holding(tmp_path, "the study"):
        with pytest.raises(UserError, match=r"the study .* is in use by process \d+ on "):
            with holding(tmp_path, "the study"):
                pass
    assert not (tmp_path / LOCK).exists()
    with holding(tmp_path, "the study"):  # free again
        pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "since": 0}))
    with holding(tmp_path, "the study"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] != gone.pid


def test_a_second_sweep_of_a_study_in_use_exits_2_before_touching_it(tmp_path, capsys):
    args = [f"output_dir={tmp_path}", "num_clients=2", "rounds=1", "seed=0,1"]
    (tmp_path / "runs").mkdir()
    with holding(tmp_path, "the study"):  # as a first sweep would, still running
        assert sweep_main(args) == 2
    assert "is in use by process" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == [] and not (tmp_path / "study.json").exists()


def test_a_sweep_with_a_key_typo_exits_2_before_any_run(tmp_path, capsys):
    assert sweep_main([f"output_dir={tmp_path}", "nun_clients=2", "seed=0,1"]) == 2
    assert "Did you mean 'num_clients'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_second_resume_of_one_run_folder_exits_2(tmp_path, capsys):
    from fedcls.config import compose
    from fedcls.outputs.results import to_yaml
    from fedcls.simulate import main as simulate_main

    (tmp_path / "config.yaml").write_text(to_yaml(compose(["num_clients=2"])))
    with holding(tmp_path, "the run folder"):  # a first resume, still running
        assert simulate_main([f"resume={tmp_path}"]) == 2
    assert "the run folder" in capsys.readouterr().err
