"""Failures keep their evidence (a failed run's traceback in its folder, a client's remote traceback
in the run's client_errors.txt), Ctrl-C stops the round loop cleanly, and fedcls leaves the
process's warning filters and torch settings as a user set them."""

import json
import threading
import warnings

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedcls.config import compose
from fedcls.errors import Interrupted, exit_code_of, short_reason
from fedcls.outputs.results import Recorder

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "fraction_evaluate=0", "save_model=false"]


def _crash_message(cfg, site: int) -> Message:
    """Round 1's training message to `site`, as the server sends it (faults.crash_prob=1: it raises)."""
    from fedcls.apps.federation import global_evaluator
    from fedcls.apps.payload import CONFIG_KEY, Payload
    from fedcls.data.federated import federated_data
    from fedcls.data.site_folders import federation_info

    ds = federated_data(cfg).dataset
    config = ConfigRecord({CONFIG_KEY: Payload(cfg, federation_info(ds)).to_json(), "server-round": 1})
    return Message(RecordDict({"arrays": global_evaluator(cfg, ds)[0], "config": config}),
                   dst_node_id=site + 1, message_type="train")


@pytest.mark.parametrize("per_client", [False, True])  # a cohort's failure; the ClientApp's own (_guarded)
def test_a_cohort_workers_error_reply_carries_the_remote_traceback(per_client, monkeypatch):
    from fedcls.apps.cohort.worker import CohortWorker
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose([*SMALL, "faults.crash_prob=1.0"])
    (reply,), _ = CohortWorker(per_client=per_client).process([(2, _crash_message(cfg, 2))])
    reason = str(reply.error.reason)
    assert short_reason(reason) == "InjectedCrash: injected crash (faults.crash_prob) at site 2, round 1"
    assert "Traceback (most recent call last)" in reason and "in client_side" in reason  # raised there
    assert reason.rstrip().endswith("InjectedCrash: injected crash (faults.crash_prob) at site 2, round 1")


def test_client_errors_keep_whole_reasons_while_rows_and_console_keep_one_line(monkeypatch, tmp_path):
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.faults import fault_of
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose([*SMALL, "rounds=2", "faults.crash_prob=0.5", "seed=3"])
    crashed = [(r, s) for r in (1, 2) for s in range(3) if fault_of(cfg, r, s) == "crash"]
    assert crashed == [(1, 1), (2, 0), (2, 2)]  # seed 3: some sites crash in each round, some train
    lines = []
    recorder = Recorder(tmp_path / "run", cfg, echo=lines.append)
    run_federation(CohortGrid(3, [CohortWorker()]), cfg, federated_data(cfg), recorder)
    text = (tmp_path / "run" / "client_errors.txt").read_text()
    assert [(r, s) for r in (1, 2) for s in range(3) if f"round {r}, site {s}, train:" in text] == crashed
    assert text.count("Traceback (most recent call last)") == len(crashed)
    for row in recorder.rows:  # one line per failure, in site order
        assert row["failures"] == [f"InjectedCrash: injected crash (faults.crash_prob) at site {s}, round {r}"
                                   for r, s in crashed if r == row["round"]]
    rounds = [line for line in lines if line.startswith("round")]  # the others: start-up phases
    assert len(rounds) == 2 and all("\n" not in line for line in lines)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["client_errors"] == "client_errors.txt"


def _fail_deep():
    raise ValueError("the loss went sideways")


def test_a_failure_writes_its_traceback_versions_and_run_id_and_the_summary_names_the_file(tmp_path):
    cfg = compose([*SMALL, "run_id=myrun"])
    recorder = Recorder(tmp_path / "myrun", cfg, echo=lambda line: None)
    try:
        _fail_deep()
    except ValueError as err:
        path = recorder.record_error(err)
    text = path.read_text()
    assert path == tmp_path / "myrun" / "error.txt"
    assert "run myrun (run_id myrun) failed" in text and "flwr " in text and "torch " in text
    assert "Traceback (most recent call last)" in text and "in _fail_deep" in text
    assert text.rstrip().endswith("ValueError: the loss went sideways")
    summary = json.loads((tmp_path / "myrun" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error_file"] == "error.txt"
    assert summary["error"] == "ValueError: the loss went sideways"
    assert "error_file" not in recorder.summary("completed")  # a resumed run that completed


def test_a_stopped_server_thread_ends_after_its_round_with_an_interrupted_summary(monkeypatch, tmp_path):
    """What Ctrl-C does to the ServerApp thread (fedcls.engine.simulation): it stops at its next
    grid call, the round and checkpoint before that complete, and the summary says interrupted."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.engine.simulation import serve
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose([*SMALL, "rounds=4", "checkpoint_every=1"])
    stop, running = threading.Event(), threading.Lock()
    recorder = Recorder(tmp_path / "run", cfg,  # Ctrl-C after round 1's line
                        echo=lambda line: line.startswith("round") and stop.set())
    thread = threading.Thread(target=serve, args=(CohortGrid(3, [CohortWorker()]), cfg, federated_data(cfg), recorder, None,
                                                           stop, running))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and not running.locked()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 1
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["round"] == 1
    assert summary["resume_with"].endswith(f"resume={tmp_path / 'run'}")


def test_ctrl_c_exits_130_and_an_interrupted_run_is_not_reported_twice(capsys):
    def interrupted_run():
        raise Interrupted

    def ctrl_c_elsewhere():
        raise KeyboardInterrupt

    assert exit_code_of(interrupted_run) == 130 and capsys.readouterr().err == ""
    assert exit_code_of(ctrl_c_elsewhere) == 130 and capsys.readouterr().err == "interrupted\n"


def test_the_first_ctrl_c_only_asks_to_stop_and_a_second_one_interrupts(capsys):
    import os
    import signal
    import time

    from fedcls.errors import STOP, ctrl_c_deferred, stop_if_asked

    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in the main thread between bytecodes
        assert STOP.is_set() and "stopping at the next safe point" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            stop_if_asked()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before
    assert not STOP.is_set()  # else the next run in this process stops at its first safe point (CI, stop 24)


def test_quiet_warnings_hide_deprecations_only_while_fedcls_calls_flower():
    from fedcls.engine.logs import quiet_logs, quiet_warnings

    before = list(warnings.filters)
    quiet_logs(False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_warnings(False):
            warnings.warn("inside", DeprecationWarning)
            warnings.warn("inside", FutureWarning)
        warnings.warn("the user's own", DeprecationWarning)
    assert [str(w.message) for w in seen] == ["the user's own"]
    assert warnings.filters == before


def test_flowers_per_client_tracebacks_leave_the_console_unless_verbose():
    """They are in client_errors.txt; other errors of Flower's runtime still show."""
    import logging

    from fedcls.engine.logs import quiet_logs

    def shown(module: str, func: str) -> bool:
        record = logging.LogRecord("flwr", logging.ERROR, f"/x/{module}.py", 1, "boom", None, None, func)
        return logging.getLogger("flwr").filter(record)

    quiet_logs(False)
    quiet_logs(False)  # a sweep calls it once per run: one filter all the same
    flwr_logger = logging.getLogger("flwr")
    assert sum(type(f).__name__ == "_Quiet" for f in flwr_logger.filters) == 1
    assert not shown("vce_api", "worker") and not shown("raybackend", "process_message")
    assert shown("vce_api", "run_api")


def test_torch_settings_are_applied_once_per_process_and_again_only_when_they_change():
    from fedcls.apps.torch_settings import applied, apply_torch_settings

    threads, tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    try:
        apply_torch_settings(1, False)
        assert torch.get_num_threads() == 1 and torch.backends.cudnn.allow_tf32 is False
        torch.set_num_threads(2)  # the user's (or another library's) own choice
        torch.backends.cudnn.allow_tf32 = True
        apply_torch_settings(1, False)  # the next message: the same settings, nothing set again
        assert torch.get_num_threads() == 2 and torch.backends.cudnn.allow_tf32 is True
        apply_torch_settings(3, False)  # a new config: its thread count
        assert torch.get_num_threads() == 3 and applied() == {"num_threads": 3, "tf32": False}
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.e2e
def test_a_failed_ray_run_leaves_its_traceback_and_one_console_line(tmp_path, capsys):
    """On Flower's Ray simulation: every client crashes, the run stops (faults.min_train_nodes),
    error.txt holds the traceback, client_errors.txt the clients' Ray tracebacks."""
    from fedcls.engine.runner import run
    from fedcls.errors import STOP

    cfg = compose([*SMALL, "num_clients=2", "rounds=2", "faults.crash_prob=1.0", "faults.min_train_nodes=1",
                   f"output_dir={tmp_path}", "run_id=run"])
    before = list(warnings.filters)
    assert run(cfg) == 1
    assert warnings.filters == before  # no process-wide ignore left behind
    run_dir = tmp_path / "run"
    error = (run_dir / "error.txt").read_text()
    assert "Traceback (most recent call last)" in error and "TooFewReplies: round 1: 0 usable" in error
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TooFewReplies" in errors[0] and str(run_dir / "error.txt") in errors[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error_file"] == "error.txt"
    clients = (run_dir / "client_errors.txt").read_text()
    assert clients.count("round 1, site ") == 2 and clients.count(", in client_side\n") == 2  # remote frames
    assert not STOP.is_set()  # the stop that ended the ServerApp thread was the failure's: a sweep's next run goes on


def test_round_timeout_binds_from_the_second_round_a_process_runs(monkeypatch, tmp_path):
    """Round 1 also starts the actors and builds their data: its real replies have no deadline."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from strategy_helpers import identity

    identity(monkeypatch)
    cfg = compose([*SMALL, "rounds=3", "faults.round_timeout=7", "checkpoint_every=0"])
    grid = CohortGrid(3, [CohortWorker()], echo=lambda line: None)
    deadlines, send = [], grid.send_and_receive

    def recording(messages, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            deadlines.append(timeout)
        return send(messages, timeout)

    monkeypatch.setattr(grid, "send_and_receive", recording)
    run_federation(grid, cfg, federated_data(cfg), Recorder(tmp_path / "run", cfg, echo=lambda line: None))
    assert deadlines == [None, 7.0, 7.0]


def test_a_run_killed_before_round_1_leaves_a_summary_and_resume_commands_are_quoted(tmp_path):
    import shlex

    cfg = compose(SMALL)
    folder = tmp_path / "a run folder"
    recorder = Recorder(folder, cfg, echo=lambda line: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 0
    (folder / "checkpoint.pt").write_bytes(b"")
    command = recorder.summary("interrupted")["resume_with"]
    assert shlex.split(command)[-1] == f"resume={folder}"


def test_nodes_that_fail_discovery_are_reported_as_such_not_as_a_roster_to_fix(monkeypatch):
    from flwr.app import Message
    from flwr.app.error import Error

    from fedcls.apps.federation import discover_sites
    from strategy_helpers import identity

    identity(monkeypatch)

    class Broken:
        def get_node_ids(self):
            return [1, 2]

        def send_and_receive(self, messages, timeout=None):
            return [Message(Error(code=0, reason="actor died while starting"), reply_to=m) for m in messages]

    with pytest.raises(RuntimeError, match="2 of 2 nodes failed to say which site they serve .*actor died"):
        discover_sites(Broken(), 2)
