"""Many sites on one machine: memory and time of a federation of 10,000 simulated sites, of which
1% are sampled per round, against the same run at 100 sites (and any other sizes asked for).

Each run is a real ``python -m fedcls.simulate`` (dataset=synthetic: one pool of 60,000 Gaussian-
cluster images of 1x16x16 at every size, IID over the sites, so a site of 10,000 holds ~5 images and
one of 100 ~480; simple-CNN, 1 local epoch), with the Flower ClientApp executor and with
``backend.executor=cohort``. Every size samples the same number of sites per round (``--sampled``,
default 100: 1% of 10,000, all of 100), to train and to evaluate, and holds the same data, so what
grows from one size to the next grows with the number of sites, not with the data or with the
number of clients a round serves (a round's training differs: the same pool in fewer, larger sites).

While a run goes, the process tree under it is read every 0.25 s from /proc (psutil): the peak
resident memory (VmHWM) and the last resident memory (VmRSS) of the driver (the fedcls process:
data, ServerApp, Flower's engine and link state) and of each Ray actor (fedcls's SiteActor, or
the cohort executor's CohortWorker); the peaks of Ray's own processes (GCS, raylet, agents) and of
its idle workers. Printed per run: wall time, seconds from the command to round 1, round 1's
seconds, the mean seconds of the later rounds, and those memories.

    python benchmarks/many_sites.py                      # 100 and 10,000 sites, both executors
    python benchmarks/many_sites.py --sites 1000 --executors cohort --rounds 5 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ["dataset=synthetic", "data.synthetic.num_samples=60000", "data.synthetic.image_size=16",
        "partition.kind=iid", "local_epochs=1", "batch_size=32", "tracking.tensorboard=false"]
RAY_ACTORS = ("ray::SiteActor", "ray::CohortWorker")


def role(proc: psutil.Process, driver: int) -> str:
    """driver | actor | idle (a Ray worker not (yet) an actor) | ray (Ray's own processes)."""
    if proc.pid == driver:
        return "driver"
    title = " ".join(proc.cmdline()[:1]) or proc.name()
    if title.startswith(RAY_ACTORS):
        return "actor"
    return "idle" if title.startswith("ray::") and "Agent" not in title else "ray"


def resident_kib(pid: int) -> tuple[int, int] | None:
    """(peak resident set so far (VmHWM), resident set now (VmRSS)) of a process, in KiB; None once gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


class TreeWatcher(threading.Thread):
    """Samples the peak RSS of every process under `pid` until stopped (VmHWM only grows, so the
    last reading of a process is its peak, up to its last 0.25 s), and its RSS at that reading."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peaks, self.last, self.roles = pid, {}, {}, {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for proc in tree:
                try:
                    kind = role(proc, self.pid)
                except psutil.Error:
                    continue
                if self.roles.get(proc.pid) != "actor":  # an idle worker that became an actor stays one
                    self.roles[proc.pid] = kind
                if (kib := resident_kib(proc.pid)) is not None:
                    self.peaks[proc.pid], self.last[proc.pid] = kib
            self.halt.wait(0.25)

    def mib(self, kind: str, of: str = "peaks") -> list[float]:
        """MiB of each process of a kind, largest first: their peaks, or (of="last") their last RSS."""
        values = getattr(self, of)
        return sorted((values[p] / 1024 for p, k in self.roles.items() if k == kind and p in values), reverse=True)


def run_once(sites: int, executor: str, sampled: int, rounds: int, extra: list[str], out: Path,
             timeout: float) -> dict:
    fraction = min(1.0, sampled / sites)
    args = [*DATA, f"num_clients={sites}", f"fraction_train={fraction:g}", f"fraction_evaluate={fraction:g}",
            f"rounds={rounds}", f"backend.executor={executor}", f"output_dir={out}",
            f"run_id={executor}-{sites}", *extra]
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "fedcls.simulate", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = TreeWatcher(proc.pid)
    watcher.start()
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the run's own Ctrl-C path: it shuts its Ray down
        try:
            console, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            console, _ = proc.communicate()
    wall = time.time() - started
    watcher.halt.set()
    watcher.join()
    rows = [json.loads(line) for line in (out / f"{executor}-{sites}" / "metrics.jsonl").read_text().splitlines()
            ] if (out / f"{executor}-{sites}" / "metrics.jsonl").exists() else []
    return {"sites": sites, "executor": executor, "fraction": fraction, "rc": proc.returncode, "wall": wall,
            "rows": rows, "to_round1": rows[0]["started_at"] - started if rows else float("nan"),
            "driver": watcher.mib("driver"), "actors": watcher.mib("actor"), "ray": watcher.mib("ray"),
            "driver_last": watcher.mib("driver", "last"), "actors_last": watcher.mib("actor", "last"),
            "idle": watcher.mib("idle"), "per_site": images_per_site(console), "console": console}


def images_per_site(console: str) -> float:
    """The train pool's images per site, from the run's data line."""
    found = re.search(r"(\d+) training images over (\d+) sites", console)
    return int(found[1]) / int(found[2]) if found else float("nan")


def line(r: dict) -> str:
    later = [row["seconds"] for row in r["rows"][1:]]
    per_round = sum(later) / len(later) if later else float("nan")
    first = r["rows"][0]["seconds"] if r["rows"] else float("nan")
    actors = ", ".join(f"{m:.0f}/{n:.0f}" for m, n in zip(r["actors"], r["actors_last"])) or "-"
    driver = f"{(r['driver'] or [0])[0]:.0f}/{(r['driver_last'] or [0])[0]:.0f}"
    idle = f"{len(r['idle'])} x {max(r['idle']):.0f}" if r["idle"] else "-"
    return (f"{r['executor']:>9} {r['sites']:>6} {r['per_site']:>6.0f} {r['fraction']:>5.2f} {len(r['rows']):>6} "
            f"{r['rc']:>3} {r['wall']:>7.1f} {r['to_round1']:>9.1f} {first:>6.1f} {per_round:>7.2f} "
            f"{driver:>11}  {actors:<19} {sum(r['ray']):>6.0f}  {idle}")


HEADER = (f"{'executor':>9} {'sites':>6} {'n/site':>6} {'frac':>5} {'rounds':>6} {'rc':>3} {'wall s':>7} "
          f"{'round1 at':>9} {'r1 s':>6} {'s/round':>7} {'driver MB':>11}  {'actors MB':<19} {'ray MB':>6}  idle MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--executors", nargs="+", default=["clientapp", "cohort"])
    parser.add_argument("--sampled", type=int, default=100, help="sites sampled per round (train and evaluate)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("overrides", nargs="*", help="more key=value for every run")
    opts = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fedcls-many-sites-"))
    results = []
    print(HEADER, flush=True)
    try:
        for executor in opts.executors:
            for sites in opts.sites:
                r = run_once(sites, executor, opts.sampled, opts.rounds, opts.overrides, out, opts.timeout)
                results.append(r)
                if r["rc"] != 0:
                    print(f"--- {executor} at {sites} sites exited {r['rc']}; its console's end:\n"
                          + "".join(r["console"].splitlines(keepends=True)[-15:]), flush=True)
                print(line(r), flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n{HEADER}\n" + "\n".join(line(r) for r in results))
    print("n/site: images per site (the same pool at every size; a site keeps data.local_test_fraction of its "
          "share to test on); round1 at: seconds from the "
          "command to round 1 begun; s/round: mean of rounds 2..; MB: peak resident memory (VmHWM) / resident "
          "memory at the end (VmRSS, last reading) of the driver and of each Ray actor; peaks of Ray's own processes "
          "(GCS, raylet, agents) summed, and of Ray's idle workers (count x largest)")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
