"""Do two runs give the same numbers? Compares metrics.jsonl rows (round, accuracy, loss, mean
train loss) of run folders with the same names under two output folders, e.g. the same commands run
on two commits (issue 15's refactor check):

    git archive <old> | tar -x -C /tmp/old; git archive <new> | tar -x -C /tmp/new
    (cd /tmp/old && PYTHONPATH=. python -m fedcls.simulate scenario=dirichlet_0.1 run_id=default output_dir=/tmp/before)
    (cd /tmp/new && PYTHONPATH=. python -m fedcls.simulate scenario=dirichlet_0.1 run_id=default output_dir=/tmp/after)
    python benchmarks/compare_runs.py /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run: Path) -> list[tuple]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((r["round"], r["accuracy"], r["loss"], r.get("train", {}).get("train_loss")))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args()
    for run in sorted(d.name for d in args.before.iterdir() if (d / "metrics.jsonl").exists()):
        if not (args.after / run / "metrics.jsonl").exists():
            print(f"{run}: missing in {args.after}")
            continue
        a, b = rows(args.before / run), rows(args.after / run)
        equal = sum(x == y for x, y in zip(a, b))
        first = next((x[0] for x, y in zip(a, b) if x != y), None)
        print(f"{run}: {equal}/{len(a)} rows equal" + (f", first difference in round {first}" if first else "")
              + ("" if len(a) == len(b) else f" ({len(b)} rows after)"))


if __name__ == "__main__":
    main()
