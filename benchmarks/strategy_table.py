"""Final global accuracy of every strategy on mnist5k for label_2 and dirichlet_0.1 with the core
defaults (10 sites, 20 rounds, 10 local epochs, seed 0), as a Markdown table.

    python benchmarks/strategy_table.py [--out results/strategy_table] [key=value ...]

Runs each cell as `python -m fedcls.simulate` (FedBN with model=simple_cnn_bn, the only change);
cells whose summary.json exists are not run again, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import strategies

SCENARIOS = ("label_2", "dirichlet_0.1")
EXTRA = {"fedbn": ["model=simple_cnn_bn"]}


def cell(out: Path, strategy: str, scenario: str, overrides: list[str]) -> dict:
    run_id = f"{scenario}-{strategy}"
    summary = out / run_id / "summary.json"
    if not summary.exists():
        subprocess.run([sys.executable, "-m", "fedcls.simulate", f"scenario={scenario}",
                        f"strategy={strategy}", *EXTRA.get(strategy, []), *overrides,
                        f"output_dir={out}", f"run_id={run_id}", "save_model=false"], check=False)
    return json.loads(summary.read_text()) if summary.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="results/strategy_table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    lines = ["| strategy | " + " | ".join(SCENARIOS) + " | seconds (label_2) |", "|---|---|---|---|"]
    for name in strategies.names():
        results = [cell(out, name, s, args.overrides) for s in SCENARIOS]
        accs = [f"{r['final_accuracy']:.3f}" if r.get("final_accuracy") is not None else "failed"
                for r in results]
        note = " (simple_cnn_bn)" if name in EXTRA else ""
        lines.append(f"| {name}{note} | " + " | ".join(accs) + f" | {results[0].get('seconds', 0):.0f} |")
        (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
