"""Real deployment on loopback: a flower-superlink, three flower-supernode processes and
`flwr run`, the same ClientApp/ServerApp as in simulation (no mocks, no network installs)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e
OVERRIDES = "num_clients=3 rounds=2 local_epochs=2 lr=0.05 model=mlp fraction_evaluate=0 save_model=false"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    """Until something listens on 127.0.0.1:port (the SuperLink), so SuperNodes need no retries."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_superlink_three_supernodes_and_flwr_run(tmp_path, cli):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(tmp_path / "flwr"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    link = free_port()
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "rehearsal"\n\n[superlink.rehearsal]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    procs = [start([str(BIN / "flower-superlink"), "--insecure", "--port", str(link),
                    "--database", str(tmp_path / "state.db")], tmp_path / "superlink.log", env)]
    try:
        wait_for_port(link)
        for site in range(3):
            procs.append(start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                                "--port", str(free_port()), "--node-config", f"partition-id={site} num-partitions=3"],
                               tmp_path / f"supernode{site}.log", env))
        out = tmp_path / "deployed"
        overrides = f"scenario=iid {OVERRIDES} output_dir={out} run_id=run"
        result = subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "rehearsal", "--stream", "--run-config",
                                 f"overrides='{overrides}'"], env=env, capture_output=True, text=True,
                                timeout=600)
        deadline = time.time() + 120  # the ServerApp writes summary.json as the run ends
        while not (out / "run" / "summary.json").exists() and time.time() < deadline:
            time.sleep(1)
        assert (out / "run" / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-2000:]
    finally:
        stop(procs)
    summary = json.loads((out / "run" / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and len(rows) == 2 and summary["final_accuracy"] > 0.5
    assert all(r["failures"] == [] and sorted(s for s, _ in r["trained"]) == [0, 1, 2] for r in rows)
    assert (out / "run" / "plots" / "accuracy.png").exists()
    # the same config simulated: the same sites, seeds and order, so the same numbers
    sim = cli("scenario=iid", *OVERRIDES.split(), f"output_dir={tmp_path / 'sim'}", "run_id=run")
    assert sim.returncode == 0, sim.stderr[-2000:]
    sim_rows = [json.loads(line) for line in (tmp_path / "sim" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == pytest.approx([r["accuracy"] for r in sim_rows], abs=0.005)
