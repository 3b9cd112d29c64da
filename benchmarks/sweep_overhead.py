"""Per-run overhead of a sweep (one shared Ray instance) against single runs of the same config.

Runs the same config (seeds 0..N-1) once as N separate `python -m fedcls.simulate` commands and
once as one `python -m fedcls.sweep`; prints wall seconds per run for each and their ratio, and
each one's overhead (wall time not spent inside rounds).

    python benchmarks/sweep_overhead.py [--runs 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def round_seconds(runs_dir: Path) -> float:
    return sum(json.loads(line)["seconds"] for p in runs_dir.glob("*/metrics.jsonl")
               for line in p.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["rounds=3", "local_epochs=1"])
    args = parser.parse_args()
    seeds = list(range(args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        singles = Path(tmp) / "singles"
        start = time.time()
        for seed in seeds:
            subprocess.run([sys.executable, "-m", "fedcls.simulate", *args.overrides, f"seed={seed}",
                            f"output_dir={singles}", "save_model=false"], check=True,
                           stdout=subprocess.DEVNULL)
        single_wall = (time.time() - start) / len(seeds)
        single_rounds = round_seconds(singles) / len(seeds)
        study = Path(tmp) / "study"
        start = time.time()
        subprocess.run([sys.executable, "-m", "fedcls.sweep", f"output_dir={study}", *args.overrides,
                        f"seed={','.join(map(str, seeds))}", "save_model=false"], check=True,
                       stdout=subprocess.DEVNULL)
        sweep_wall = (time.time() - start) / len(seeds)
        sweep_rounds = round_seconds(study / "runs") / len(seeds)
    print(f"config: {' '.join(args.overrides)}, {len(seeds)} runs")
    print(f"single runs: {single_wall:.1f} s/run wall, overhead {single_wall - single_rounds:.1f} s/run")
    print(f"sweep:       {sweep_wall:.1f} s/run wall, overhead {sweep_wall - sweep_rounds:.1f} s/run")
    print(f"ratio sweep/single wall per run: {sweep_wall / single_wall:.2f}; "
          f"overhead ratio {(sweep_wall - sweep_rounds) / (single_wall - single_rounds):.2f}")


if __name__ == "__main__":
    main()
