#!/usr/bin/env bash
# Fresh machine -> the default simulation (10 Non-IID sites, Dirichlet 0.1, embedded MNIST).
# Extra arguments are config overrides, e.g. scripts/quickstart.sh scenario=iid rounds=5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fedcls.simulate scenario=dirichlet_0.1 "$@"
