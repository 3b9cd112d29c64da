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


def flwr_env(tmp_path: Path, link: int, certs: Path | None) -> dict:
    """Flower's CLI config (FLWR_HOME) naming the rehearsal SuperLink; no runtime installs."""
    home = tmp_path / "flwr"
    home.mkdir()
    security = f'root-certificates = "{certs / "ca.crt"}"' if certs else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "rehearsal"\n\n[superlink.rehearsal]\n'
                                      f'address = "127.0.0.1:{link}"\n{security}\n')
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def superlink_args(link: int, tmp_path: Path, certs: Path | None) -> list[str]:
    args = [str(BIN / "flower-superlink"), "--port", str(link), "--database", str(tmp_path / "state.db")]
    if certs is None:
        return [*args, "--insecure"]
    return [*args, "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]


def supernode_args(link: int, site_dir: Path, certs: Path | None, key: str) -> list[str]:
    args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{link}", "--port", str(free_port()),
            "--node-config", f'data-dir="{site_dir}"']
    if certs is None:
        return [*args, "--insecure"]
    return [*args, "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / key)]


def deploy(tmp_path: Path, runs: list[str], certs: Path | None = None, intruder: bool = False,
           fmt: str = "imagefolder") -> list[tuple[Path, subprocess.CompletedProcess]]:
    """Prepare 3 site folders (from the first run's config: every run shares them), start a SuperLink
    and a SuperNode per site (with TLS and SuperNode authentication when `certs`), submit each run
    in turn with `python -m fedcls.submit`, tear down; returns each run's folder and submit result."""
    from fedcls.deploy.prepare_sites import main as prepare_sites

    assert prepare_sites([f"out={tmp_path / 'sites'}", f"format={fmt}", *runs[0].split()]) == 0
    link = free_port()
    env = flwr_env(tmp_path, link, certs)
    procs = [start(superlink_args(link, tmp_path, certs), tmp_path / "superlink.log", env)]
    done = []
    try:
        wait_for_port(link)
        for site in range(3):
            if certs:  # the coordinator admits each site's public key
                reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(certs / f"site-{site}.pub"),
                                      "rehearsal"], env=env, capture_output=True, text=True, timeout=120)
                assert reg.returncode == 0, reg.stdout + reg.stderr
            procs.append(start(supernode_args(link, tmp_path / "sites" / f"site-{site}", certs, f"site-{site}"),
                               tmp_path / f"supernode{site}.log", env))
        if intruder:  # a fourth SuperNode whose key nobody registered: it must not join
            procs.append(start(supernode_args(link, tmp_path / "sites" / "site-0", certs, "site-3"),
                               tmp_path / "intruder.log", env))
        for i, overrides in enumerate(runs):
            out = tmp_path / "deployed" / f"run{i}"
            result = subprocess.run([sys.executable, "-m", "fedcls.submit", "superlink=rehearsal", *overrides.split(),
                                     f"output_dir={out.parent}", f"run_id={out.name}"], env=env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=600)
            assert _status(out) is not None, result.stdout[-3000:] + result.stderr[-2000:]
            done.append((out, result))
    finally:
        stop(procs)
    return done


def _status(run: Path) -> str | None:
    """summary.json's status (a run writes one as it starts: interrupted until it ends), or None."""
    try:
        return json.loads((run / "summary.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_run(run: Path) -> list[dict]:
    summary, rows = json.loads((run / "summary.json").read_text()), rows_of(run)
    assert summary["status"] == "completed" and len(rows) == 2 and summary["final_accuracy"] > 0.5
    assert all(r["failures"] == [] and sorted(s for s, _ in r["trained"]) == [0, 1, 2] for r in rows)
    assert (run / "plots" / "accuracy.png").exists()
    return rows


def simulated_rows(cfg_args: list[str], tmp_path: Path, monkeypatch, only_sites: set[int] | None = None) -> list[dict]:
    """The same config run in-process through the ClientApp's own functions (the path a Ray
    simulation runs; tests/test_cohort.py and test_e2e.py tie the two together); with
    `only_sites`, the other sites never train (the federation without them)."""
    from fedcls.algorithms.feature import Extension
    from fedcls.apps import federation
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import compose
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    class OnlySites(Extension):
        def train_sites(self, rnd: int) -> set[int] | None:
            return only_sites

    identity(monkeypatch)
    if only_sites is not None:
        monkeypatch.setattr(federation, "extensions_for", lambda cfg, data: [OnlySites()])
    cfg = compose(cfg_args)
    recorder = Recorder(tmp_path / "sim", cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)]), cfg, federated_data(cfg), recorder)
    return recorder.rows


def test_insecure_and_tls_deployments_of_three_sites(tmp_path, monkeypatch):
    """Two federations at once (each mostly waits on Flower's polling). The insecure one runs three
    runs in turn: an honest one whose numbers must equal the simulation's; one where site 2 is
    Byzantine, sending issue 16's six attacks one per round across the SuperLink, which the server
    refuses naming site 2 every round while FedAvg keeps the accuracy of the federation without site
    2; and one that fails (it needs all three sites) and makes `fedcls.submit` exit 1. The other
    has TLS and SuperNode authentication, and a fourth, unregistered SuperNode that is refused; it
    runs an honest run, then one with secure aggregation (Flower's SecAgg+ across the SuperLink)
    where site 0 crashes inside the protocol in round 2. (Each federation's runs are about equal
    in time: SecAgg+'s four exchanges per round make it the longest.)"""
    from concurrent.futures import ThreadPoolExecutor

    from fedcls.deploy.certs import main as make_certs

    plain, secure = tmp_path / "insecure", tmp_path / "tls"
    plain.mkdir(), secure.mkdir()
    certs = secure / "certs"
    assert make_certs([f"out={certs}", "sites=4"]) == 0
    honest = f"scenario=iid {OVERRIDES}"
    attacked = f"{honest} rounds=6 faults.byzantine_site=2 faults.min_train_nodes=2"
    failing = f"{honest} rounds=1 faults.byzantine_site=2 faults.min_train_nodes=3"
    with_tls = f"scenario=dirichlet_0.5 {OVERRIDES}"
    secagg = f"{with_tls} privacy.secagg=true faults.crash_prob=0.1"  # seed 0: site 0 crashes in round 2 only
    with ThreadPoolExecutor(2) as pool:
        insecure = pool.submit(deploy, plain, [honest, attacked, failing])
        tls = pool.submit(deploy, secure, [with_tls, secagg], certs, True, "tensor")
        (honest_run, ok), (attacked_run, attacked_ok), (failed_run, failed) = insecure.result()
        (tls_run, tls_ok), (secagg_run, secagg_ok) = tls.result()

    rows = check_run(honest_run)
    assert ok.returncode == 0 and "finished:completed" in ok.stdout
    # the same config simulated: the same data, seeds and order, so the same numbers
    sim_rows = simulated_rows(honest.split(), plain, monkeypatch)
    for key in ("accuracy", "loss"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in sim_rows], rel=1e-6), key
    assert [r["train"]["train_loss"] for r in rows] == pytest.approx([r["train"]["train_loss"] for r in sim_rows], rel=1e-9)

    without_site_2 = simulated_rows([*honest.split(), "rounds=6"], plain / "six", monkeypatch, only_sites={0, 1})
    check_attacked(attacked_run, attacked_ok, without_site_2)
    assert failed.returncode == 1 and "finished:failed" in failed.stdout, failed.stdout[-2000:]
    assert _status(failed_run) == "failed"

    tls_rows = check_run(tls_run)  # exactly sites 0, 1, 2 trained: the unregistered fourth node never joined
    assert tls_ok.returncode == 0
    check_secagg(secagg_run, secagg_ok, secagg, tls_rows)
    assert "Failed to activate SuperNode" in (secure / "intruder.log").read_text()
    assert "Uvicorn running on https://" in (secure / "superlink.log").read_text()


def check_attacked(run: Path, submitted: subprocess.CompletedProcess, without_rows: list[dict]) -> None:
    """Site 2 named in every round's failures, with the reason of that round's attack; sites 0
    and 1 trained; final accuracy within 2 points of the federation without site 2."""
    from fedcls.schema import BYZANTINE_ATTACKS

    rows = rows_of(run)
    assert submitted.returncode == 0 and len(rows) == 6, submitted.stdout[-2000:]
    reasons = ["num-examples=1e+12", "num-examples=-2000", "is float32[1]", "update norm", "[3, 3]", "unexpected arrays"]
    for attack, reason, row in zip(BYZANTINE_ATTACKS, reasons, rows):
        assert row["faults"]["rejected"] == [2] and sorted(s for s, _ in row["trained"]) == [0, 1], attack
        assert any(f.startswith("site 2 rejected: ") and reason in f for f in row["failures"]), (attack, row["failures"])
    assert abs(rows[-1]["accuracy"] - without_rows[-1]["accuracy"]) <= 0.02
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def check_secagg(run: Path, submitted: subprocess.CompletedProcess, overrides: str, honest_rows: list[dict]) -> None:
    """SecAgg+ over the SuperLink: round 1 is the honest run's within the quantisation (the same
    seed, data and training; only the mean is computed under masks); in round 2 site 0 drops out
    mid-protocol (its injected crash, in its training), the other two's masks are removed, the run
    completes and names the site."""
    from fedcls.apps.faults import fault_of
    from fedcls.config import compose

    cfg = compose(overrides.split())
    assert [[s for s in range(3) if fault_of(cfg, r, s) == "crash"] for r in (1, 2)] == [[], [0]]
    rows = rows_of(run)
    summary = json.loads((run / "summary.json").read_text())
    assert submitted.returncode == 0 and summary["status"] == "completed", submitted.stdout[-2000:]
    assert len(rows) == 2 and summary["final_accuracy"] > 0.5
    assert rows[0]["failures"] == [] and sorted(s for s, _ in rows[0]["trained"]) == [0, 1, 2]
    assert rows[0]["loss"] == pytest.approx(honest_rows[0]["loss"], rel=1e-3)
    assert rows[0]["bytes"]["from_sites"] > honest_rows[0]["bytes"]["from_sites"]  # the protocol's four exchanges
    assert rows[1]["faults"]["secagg_dropped"] == [0] and rows[1]["faults"]["crashed"] == [0]
    assert sorted(s for s, _ in rows[1]["trained"]) == [1, 2]
    assert len(rows[1]["failures"]) == 1 and "injected crash" in rows[1]["failures"][0]
