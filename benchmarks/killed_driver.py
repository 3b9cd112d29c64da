"""How long the Ray processes a simulation started outlive its driver after ``kill -9``.

Starts a small simulation (digits, 3 sites, MLP), waits for round 2, SIGKILLs the driver alone (as
the OOM killer would) and prints, every 10 s, which of the processes below it are still running,
then the seconds until none is. fedcls sets RAY_gcs_rpc_server_reconnect_timeout_s=5 for a local
Ray (fedcls.engine.lifecycle); an environment value wins, so the old behaviour is measured with

    python benchmarks/killed_driver.py                                          # fedcls's setting
    RAY_gcs_rpc_server_reconnect_timeout_s=60 python benchmarks/killed_driver.py  # Ray's default
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def running(pids: list[int]) -> dict[int, str]:
    """{pid: command} of those of `pids` still running (not gone, not a zombie)."""
    alive = {}
    for pid in pids:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                alive[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:50]
        except OSError:
            continue
    return alive


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        run = Path(out) / "run"
        proc = subprocess.Popen([sys.executable, "-m", "fedcls.simulate", "dataset=digits", "num_clients=3", "rounds=30",
                                 "local_epochs=3", "model=mlp", f"output_dir={out}", "run_id=run"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not ((run / "metrics.jsonl").exists()
                                           and len((run / "metrics.jsonl").read_text().splitlines()) >= 2):
            time.sleep(0.2)
        tree = descendants(proc.pid)
        print(f"before the kill: {len(tree)} processes below the driver: {sorted(running(tree).values())}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed, shown = time.time(), 0
        while (left := running(tree)) and time.time() - killed < 180:
            if time.time() - killed >= shown + 10:
                shown += 10
                print(f"{shown} s: {len(left)} still running: {sorted(left.values())}", flush=True)
            time.sleep(0.5)
        elapsed = time.time() - killed
        print(f"all gone {elapsed:.1f} s after the kill" if not left else f"{len(left)} still running after 180 s")


if __name__ == "__main__":
    main()
