"""Where a run's start-up goes: from the command to round 1 begun, phase by phase, cold (Ray
started by the run) and attached (``backend.ray_address=auto`` to a Ray started beforehand).

Each start is a real ``python -m fedcls.simulate`` of the default scenario (2 rounds); every line of
its console is stamped with the seconds since the command was launched, and the phases are read off
those stamps (the run's own phase lines: header = Python and fedcls imported and the config
composed; data; ray = Ray up; flower = the ServerApp running; sites = every site answered the roll
call, i.e. round 1 begins; then rounds 1 and 2). Round 1 done less round 2's time is printed too:
the start-up cost wherever it falls (work moved into round 1 is not start-up saved). Also printed:
what the client actors import, timed in a fresh Python.

    python benchmarks/startup.py [--repeat 3] [key=value ...]

The second table runs the default scenario on the inprocess executor (``backend.executor=inprocess``):
no Ray, the ClientApp called in the command's process ("clients" phase), the same numbers.

The last table runs each command in a warm driver (``python -m fedcls.serve``, ``FEDCLS_SERVER``),
started once before (not counted, as ``ray start`` is not) and warmed by one command: the command
imports nothing heavy and the driver holds Ray, PyTorch, Flower and warm client actors.

The attached start runs ``ray start --head --block`` itself first (and ends it after), as a user
would (README, "A long-lived Ray"): its own start-up is not counted, as it is paid once per session.
The last table attaches with ``backend.keep_actors=true`` after one such run (not counted) left its
client actors warm in that Ray: a researcher's second and later runs of the day.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PORT = 6391  # the attached start's head; an explicit address, so another Ray on this machine is not used
PHASES = [("header", "fedcls:"), ("data", "  data"), ("clients", "  clients"), ("ray", "  ray"), ("flower", "  flower"),
          ("sites", "  sites"), ("round 1", "round   1/"), ("round 2", "round   2/")]


def stamped_run(overrides: list[str], env: dict) -> dict[str, float]:
    """Seconds from launch at which each phase line appeared; 'begun': round 1 begun (the last
    start-up phase line); 'cost': round 1 done less one steady round (round 2's time), i.e. the
    start-up whether it happens before round 1 or inside it (actors still starting)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "fedcls.simulate", "rounds=2", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    stamps: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - start
        lines.append(line)
        for name, prefix in PHASES:
            if line.startswith(prefix) and name not in stamps:
                stamps[name] = now
    if proc.wait() != 0 or "round 2" not in stamps:
        sys.exit("the run failed:\n" + "".join(lines[-30:]))
    if "FEDCLS_SERVER" in env and any("; running here" in line for line in lines):
        sys.exit("the warm driver did not run the command:\n" + "".join(lines[:5]))
    stamps["begun"] = max(t for name, t in stamps.items() if not name.startswith("round"))
    stamps["cost"] = 2 * stamps["round 1"] - stamps["round 2"]
    return stamps


def start_head(env: dict) -> subprocess.Popen:
    """`ray start --head --block` (the README's long-lived Ray) on PORT, returned once it is up."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    return started([ray, "start", "--head", f"--port={PORT}", "--include-dashboard=false", "--disable-usage-stats",
                    "--block"], ("--block", "Ray runtime started"), env)


def started(command: list[str], ready: tuple[str, ...], env: dict) -> subprocess.Popen:
    """`command` started, returned once a line of its output holds one of `ready` (its pipe then kept
    drained); exits naming it when it ends before."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if any(marker in line for marker in ready):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    sys.exit(f"{' '.join(command[:4])} failed")


def start_warm_driver(socket: str, overrides: list[str], env: dict) -> subprocess.Popen:
    """`python -m fedcls.serve` on `socket`, returned once it serves commands."""
    return started([sys.executable, "-u", "-m", "fedcls.serve", f"socket={socket}", *overrides],
                   ("serving commands at",), env)


def forget_head() -> None:
    """Remove Ray's note of the head just ended (`ray stop` would): with it, a later ray.init()
    without an address tries to attach to the dead head instead of starting Ray."""
    note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if note.exists() and note.read_text().strip().endswith(f":{PORT}"):
        note.unlink()


def table(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{title} (median of {len(runs)}; seconds since the command, and the phase's own)")
    previous = 0.0
    for name, _ in PHASES:
        times = [r[name] for r in runs if name in r]
        if not times:
            continue
        at = statistics.median(times)
        print(f"  {name:<8} at {at:5.1f}  phase {at - previous:5.1f}")
        previous = at
    print(f"  {statistics.median(r['begun'] for r in runs):5.1f} s to round 1 begun; "
          f"{statistics.median(r['cost'] for r in runs):5.1f} s to round 1 done less a steady round (round 2's)")


def client_imports(actor_module: str) -> float:
    """Seconds a fresh Python takes to import what a client actor imports, with the actor class
    from `actor_module`."""
    code = (f"import time; t = time.perf_counter(); import ray; import {actor_module}; "
            "import fedcls.apps.client_app; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"output_dir={tmp}", "save_model=false", *args.overrides]
        stamped_run(base, env)  # warm the file cache and bytecode, as a researcher's second run is
        cold = [stamped_run(base, env) for _ in range(args.repeat)]
        inprocess = [stamped_run([*base, "backend.executor=inprocess"], env) for _ in range(args.repeat)]
        head = start_head(env)
        try:
            address = f"backend.ray_address=127.0.0.1:{PORT}"
            attached = [stamped_run([*base, address], env) for _ in range(args.repeat)]
            stamped_run([*base, address, "backend.keep_actors=true"], env)  # leaves the actors warm
            kept = [stamped_run([*base, address, "backend.keep_actors=true"], env) for _ in range(args.repeat)]
        finally:
            head.terminate()  # `ray start --block` ends its own processes (not `ray stop`: that ends every Ray here)
            head.wait()
            forget_head()
        driver = start_warm_driver(f"{tmp}/serve.sock", args.overrides, env)
        try:
            served_env = dict(env, FEDCLS_SERVER=f"{tmp}/serve.sock")
            stamped_run(base, served_env)  # the driver's first command, as a researcher's first of the day
            served = [stamped_run(base, served_env) for _ in range(args.repeat)]
        finally:
            driver.terminate()  # SIGTERM: the driver ends its Ray and actors
            driver.wait()
    table("cold: Ray started by the run", cold)
    table("no Ray: backend.executor=inprocess (the ClientApp in the run's process, one client at a time)", inprocess)
    table("attached: backend.ray_address=auto", attached)
    table("attached, actors kept by an earlier run: backend.keep_actors=true", kept)
    table("through a warm driver: python -m fedcls.serve, FEDCLS_SERVER", served)
    print("\na client actor's imports (ray, its class's module, fedcls.apps.client_app) in a fresh Python, "
          "median of 3:")
    for label, module in (("Flower's ClientAppActor", "flwr.simulation.ray_transport.ray_actor"),
                          ("fedcls's SiteActor", "fedcls.engine.site_actor")):
        print(f"  {label:<24} {statistics.median(client_imports(module) for _ in range(3)):.1f} s")


if __name__ == "__main__":
    main()
