"""The warm driver (python -m fedcls.serve; fedcls.engine.warm_driver): a command with FEDCLS_SERVER
set runs in it with the rows it would give alone, its bad input and Ctrl-C handled as alone, and a
command the driver must not serve (other code, another Ray) runs by itself."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from fedcls.engine import code_digest as digest_module
from fedcls.engine import warm_driver
from fedcls.engine.warm_driver import SERVER_ENV, Channel, refusal

SMALL = ["dataset=digits", "num_clients=3", "model=mlp", "local_epochs=1", "fraction_evaluate=0.5", "save_model=false"]
SAME = ("round", "accuracy", "loss", "train", "clients", "sampled", "trained")


def message(**changes) -> dict:
    return {"tool": "simulate", "args": ["seed=1"], "cwd": "/", "code": "abc", "env": {k: os.environ.get(k) for k in
                                                                          warm_driver.SAME_ENV}, **changes}


def test_the_driver_refuses_what_it_would_not_run_as_the_command_would():
    assert refusal(message(), None, "abc") is None
    assert refusal(message(args=["backend.ray_address=null"]), None, "abc") is None
    assert refusal(message(args=["backend.ray_address=auto"]), "auto", "abc") is None
    assert "other code" in refusal(message(code="def"), None, "abc")
    assert "backend.ray_address=auto" in refusal(message(args=["backend.ray_address=auto"]), None, "abc")
    assert "not 'report'" in refusal(message(tool="report"), None, "abc")
    assert "not a fedcls command" in refusal(message(args="seed=1"), None, "abc")
    assert "not a fedcls command" in refusal({"tool": "simulate", "code": "abc"}, None, "abc")
    env = message()["env"] | {"CUDA_VISIBLE_DEVICES": "7"}
    assert "CUDA_VISIBLE_DEVICES differs" in refusal(message(env=env), None, "abc")


def test_the_code_digest_changes_with_a_source_file_and_nothing_else(tmp_path, monkeypatch):
    package = tmp_path / "somepkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(digest_module, "PACKAGES", ("somepkg",))
    before = digest_module.code_digest()
    assert digest_module.code_digest() == before
    (package / "notes.txt").write_text("not code")
    assert digest_module.code_digest() == before
    (package / "__init__.py").write_text("x = 2\n")
    assert digest_module.code_digest() != before
    assert "somepkg" not in sys.modules  # found, not imported


def test_a_command_the_driver_refuses_or_that_finds_none_runs_here_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "none.sock"))
    assert warm_driver.forward("simulate", ["seed=1"]) is None
    assert "no fedcls server answers at" in capsys.readouterr().err
    listener = warm_driver._listen(tmp_path / "s.sock")
    served = threading.Thread(target=lambda: warm_driver._serve_one(Channel(listener.accept()[0]), None, "old", {"simulate": None}))
    served.start()
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "s.sock"))
    try:
        assert warm_driver.forward("simulate", ["seed=1"]) is None
    finally:
        served.join(10)
        listener.close()
    assert "runs other code than this command's" in capsys.readouterr().err
    assert warm_driver.forward("simulate", ["--help"]) is None  # help and --cfg never go to a driver


def test_a_channel_reads_messages_across_chunks_and_ends_on_garbage():
    left, right = socket.socketpair()
    with left, right:
        sender, receiver = Channel(left), Channel(right)
        sender.send({"out": "a\nb"})
        left.sendall(b'{"exit"')
        assert receiver.receive() == {"out": "a\nb"}
        assert receiver.receive(timeout=0.1) == "timeout"
        left.sendall(b': 3}\n[1, 2]\nnot json\n')
        assert receiver.receive() == {"exit": 3}
        assert receiver.receive() is None and receiver.receive() is None  # a list, then not JSON
        left.close()
        assert receiver.receive() is None


def test_a_second_driver_on_the_same_socket_is_refused(tmp_path):
    from fedcls.errors import UserError

    listener = warm_driver._listen(tmp_path / "d" / "s.sock")
    try:
        assert (tmp_path / "d").stat().st_mode & 0o077 == 0  # only its user may send commands
        with pytest.raises(UserError, match="already answers"):
            warm_driver._listen(tmp_path / "d" / "s.sock")
    finally:
        listener.close()
    stale = warm_driver._listen(tmp_path / "d" / "s.sock")  # a killed server's socket file is replaced
    stale.close()


def rows(run_dir) -> list[list]:
    return [[json.loads(line)[k] for k in SAME] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def command(tmp_path, *args, served: bool = True, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({SERVER_ENV: str(tmp_path / "s.sock")} if served else {})}
    return subprocess.Popen([sys.executable, "-m", "fedcls.simulate", *SMALL, f"output_dir={tmp_path}", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.e2e
def test_commands_run_in_the_warm_driver_as_they_run_alone(tmp_path):
    server = subprocess.Popen([sys.executable, "-u", "-m", "fedcls.serve", f"socket={tmp_path / 's.sock'}", *SMALL],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if "serving commands at" in line:
                break
        threading.Thread(target=server.stdout.read, daemon=True).start()
        first = command(tmp_path, "rounds=2", "seed=3", "run_id=served")
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
        assert "done in" in out and "running here" not in err

        bad = command(tmp_path, "strategy=fedavgg")
        out, err = bad.communicate(timeout=120)
        assert bad.returncode == 2 and "unknown strategy 'fedavgg'" in err and "Did you mean 'fedavg'" in err

        piped = command(tmp_path, "rounds=200", "run_id=piped")  # as `... | head -2`
        lines = [piped.stdout.readline() for _ in range(2)]
        piped.stdout.close()
        assert piped.wait(timeout=120) == 141 and lines[0].startswith("fedcls: digits")

        long = command(tmp_path, "rounds=200", "run_id=stopped", start_new_session=True)
        metrics = tmp_path / "stopped" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n")) and long.poll() is None:
            time.sleep(0.05)
        queued = command(tmp_path, "rounds=2", "seed=3", "run_id=served_again")  # waits for the long one
        leaver = command(tmp_path, "rounds=2", "run_id=left")  # waits too, then is Ctrl-C'd: never runs
        time.sleep(2 * warm_driver.BUSY_NOTE_S)
        leaver.send_signal(signal.SIGINT)
        out, err = leaver.communicate(timeout=60)
        assert leaver.returncode == 130 and "interrupted before the fedcls server started" in err
        long.send_signal(signal.SIGINT)
        out, err = long.communicate(timeout=120)
        summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
        assert long.returncode == 130, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("interrupted") and summary["status"] == "interrupted"
        assert 1 <= summary["rounds_completed"] < 200 and "resume_with" in summary

        out, err = queued.communicate(timeout=300)
        assert queued.returncode == 0 and "is running another command; this one waits" in out, err[-3000:]
        alone = command(tmp_path, "rounds=2", "seed=3", "run_id=alone", served=False)
        out, err = alone.communicate(timeout=300)
        assert alone.returncode == 0, err[-3000:]
        assert rows(tmp_path / "served") == rows(tmp_path / "served_again") == rows(tmp_path / "alone")
        assert server.poll() is None  # it served all of them, the failing and the stopped one included
        assert not (tmp_path / "left").exists()
        assert json.loads((tmp_path / "piped" / "summary.json").read_text())["status"] == "interrupted"  # stopped
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0 and not (tmp_path / "s.sock").exists()
    with pytest.raises(OSError):
        socket.socket(socket.AF_UNIX).connect(str(tmp_path / "s.sock"))


def test_a_driver_with_bad_input_exits_2_naming_the_fix(tmp_path, capsys):
    from fedcls.serve import main

    assert main(["strategy=fedavgg", f"socket={tmp_path / 's.sock'}"]) == 2
    assert "unknown strategy 'fedavgg'" in capsys.readouterr().err
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert main([f"socket={shared / 's.sock'}"]) == 2
    assert "not a folder only you can enter" in capsys.readouterr().err
    assert main([f"socket={tmp_path / ('x' * 120) / 's.sock'}"]) == 2
    assert "cannot listen at socket=" in capsys.readouterr().err
