#!/usr/bin/env bash
# One-call GPU check (issue 19, item 4): on a GPU machine with only PyTorch installed, install the
# bundle, run three checks and print one table with the GPU's name:
#   1. benchmarks/cohort.py --workload resnet18 (20 clients x 500 samples, batch 32, E=1): plain loop,
#      per-client Flower path, cohort executor; targets cohort <= 0.25 s/round and >= 5x Flower's path;
#   2. 1,000 clients, 10% sampled per round, cohort executor: s/round and peak GPU memory (device-wide,
#      polled during the run by cohort.py);
#   3. the default scenario (python -m fedcls.simulate) with GPU actors (backend.num_gpus=0.25
#      device=auto) against the CPU path (backend.num_gpus=0 device=cpu): final accuracy of each.
#
# The bundle is built on the development machine, not here (the lead builds it once, ~2 min; see
# ../shared/gpu/README.md), from the project root in its venv:
#     python ../shared/gpu/bundle.py --dist "fedcls[dev]"       # -> .gpu-bundle/ (git-ignored)
# and travels with the tree (the device tool's carry: [".gpu-bundle"]). Then, on the GPU machine:
#     GPU_CHECK_DIR=$OUT bash benchmarks/gpu_check.sh           # logs and JSON kept in $GPU_CHECK_DIR
# Not yet measured end to end; estimated 6-8 min on an H200 (sections 3's two runs go side by side).
# Knobs (environment): PYTHON (python3), FLOWER_ACTORS (10: Flower actors sharing the GPU in 1.),
# COHORT_ACTORS (1), MANY_SAMPLES (100: samples per client in 2.), SIM_OVERRIDES (extra key=value for 3.).
#     bash benchmarks/gpu_check.sh --cpu-smoke   # no GPU: every step on CPU at toy sizes (tests this script)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
WORK=${GPU_CHECK_DIR:-$(mktemp -d)}
mkdir -p "$WORK"
step() { echo "[gpu_check $(date +%T)] $*" >&2; }
run_logged() {  # run_logged NAME CMD...: output to $WORK/NAME.log; on failure show its tail and stop
  step "$1 (log: $WORK/$1.log)"
  local name=$1; shift
  if ! "$@" >"$WORK/$name.log" 2>&1; then
    tail -n 30 "$WORK/$name.log" >&2
    echo "gpu_check: $name failed (full log: $WORK/$name.log)" >&2
    exit 1
  fi
}

if (( SMOKE )); then
  PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  COHORT=(--clients 4 --samples 20 --rounds 2)
  MANY=(--clients 50 --fraction 0.1 --samples 20 --rounds 2 --skip-flower)
  SIM=(rounds=1 local_epochs=1) GPU_SIM=(backend.num_gpus=0 device=auto)
else
  PY=${PYTHON:-python3}
  COHORT=(--workload resnet18 --samples 500 --actors "${COHORT_ACTORS:-1}" --flower-actors "${FLOWER_ACTORS:-10}")
  MANY=(--workload resnet18 --clients 1000 --fraction 0.1 --samples "${MANY_SAMPLES:-100}"
        --actors "${COHORT_ACTORS:-1}" --skip-flower)
  SIM=() GPU_SIM=(backend.num_gpus=0.25 device=auto)
  # 0. a GPU, or stop
  if command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader \
       >"$WORK/gpu.txt" 2>/dev/null && [[ -s "$WORK/gpu.txt" ]]; then
    step "GPU: $(head -n 1 "$WORK/gpu.txt")"
  elif ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_check: no GPU here (nvidia-smi finds none and torch.cuda.is_available() is False):" \
         "run it on a GPU machine, or use --cpu-smoke to test the script" >&2
    exit 2
  fi
  # 1. the bundle (Flower, Ray, Hydra, ... beside the machine's own PyTorch)
  export PYTHONPATH="$PWD/.gpu-bundle/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c 'import flwr, ray, fedcls.engine.runner' 2>/dev/null; then
    if [[ ! -f .gpu-bundle/install.sh ]]; then
      echo "gpu_check: Flower/Ray are missing and there is no .gpu-bundle/install.sh here. Build the" \
           "bundle on the development machine (project root, its venv):" \
           "python ../shared/gpu/bundle.py --dist \"fedcls[dev]\"  (~2 min; see ../shared/gpu/README.md)," \
           "bring .gpu-bundle/ to this machine (device tool: carry [\".gpu-bundle\"]) and run this again" >&2
      exit 3
    fi
    run_logged install bash .gpu-bundle/install.sh
    "$PY" -c 'import flwr, ray, fedcls.engine.runner' || { echo "gpu_check: the bundle installed but" \
      "flwr/ray/fedcls do not import with PYTHONPATH=$PYTHONPATH (see above)" >&2; exit 3; }
  fi
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"

# 2. the cohort benchmark (timings first, on an idle machine), then 1,000 clients at 10%
run_logged cohort "$PY" benchmarks/cohort.py "${COHORT[@]}" --json "$WORK/cohort.json"
run_logged many "$PY" benchmarks/cohort.py "${MANY[@]}" --json "$WORK/many.json"
# 3. the default scenario, GPU actors and the CPU path side by side (accuracy only)
read -ra EXTRA <<<"${SIM_OVERRIDES:-}"
for kind in gpu cpu; do
  if [[ $kind == gpu ]]; then BACKEND=("${GPU_SIM[@]}"); else BACKEND=(backend.num_gpus=0 device=cpu); fi
  run_logged "default_$kind" "$PY" -m fedcls.simulate "${SIM[@]}" "${EXTRA[@]}" "${BACKEND[@]}" \
    output_dir="$WORK/runs" run_id="$kind" save_model=false &
done
for job in $(jobs -p); do wait "$job" || exit 1; done

# 4. the table
SMOKE=$SMOKE "$PY" - "$WORK" <<'EOF'
import json, os, sys
from pathlib import Path

import torch

work, smoke = Path(sys.argv[1]), os.environ["SMOKE"] == "1"
cohort, many = (json.loads((work / f"{n}.json").read_text()) for n in ("cohort", "many"))
acc = {k: json.loads((work / "runs" / k / "summary.json").read_text())["final_accuracy"] for k in ("gpu", "cpu")}
judge = (lambda ok: "n/a (CPU smoke)") if smoke else (lambda ok: "PASS" if ok else "FAIL")
s, shape = cohort["seconds_per_round"], f"{cohort['clients']} x {cohort['samples']}"
speedup = s["per-client Flower path"] / s["cohort executor"]
total = f" of {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f}" if torch.cuda.is_available() else ""
peak = many["gpu_peak_gib"]["cohort executor"]
rows = [
    (f"{cohort['workload']} {shape}: plain loop", f"{s['plain loop']:.3f} s/round", "", ""),
    (f"{cohort['workload']} {shape}: per-client Flower ({cohort['flower_actors']} actors)",
     f"{s['per-client Flower path']:.3f} s/round", "", ""),
    (f"{cohort['workload']} {shape}: cohort executor ({cohort['actors']} actors)",
     f"{s['cohort executor']:.3f} s/round", "<= 0.25 s/round", judge(s["cohort executor"] <= 0.25)),
    ("cohort speed-up over per-client Flower", f"{speedup:.1f}x", ">= 5x", judge(speedup >= 5)),
    (f"{many['workload']} {many['clients']} x {many['samples']}, {many['fraction']:.0%} sampled: cohort",
     f"{many['seconds_per_round']['cohort executor']:.3f} s/round, peak GPU {peak:.2f}{total} GiB",
     "runs, fits in memory", judge(True)),
    ("default scenario final accuracy, GPU actors", f"{acc['gpu']:.4f}", "", ""),
    ("default scenario final accuracy, CPU path", f"{acc['cpu']:.4f}", "", ""),
    ("difference GPU - CPU", f"{acc['gpu'] - acc['cpu']:+.4f}", "", ""),
]
print(f"GPU check on {cohort['device']} (torch {torch.__version__}, CUDA {torch.version.cuda})"
      + (" -- CPU SMOKE TEST, toy sizes: the figures mean nothing" if smoke else ""))
print("| check | measured | target | result |\n|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
print(f"(logs and JSON: {work})")
EOF
