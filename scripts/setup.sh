#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install fedcls with its dev extra; re-installs only when
# pyproject.toml changed. Sourced by quickstart.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "fedcls needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.fedcls-installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  start=$(date +%s)
  echo "setup: installing fedcls into .venv with flwr, torch, torchvision, ray, avalanche-lib, opacus, numpy," \
       "matplotlib, hydra-core, pytest and ruff (pip; the first time takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  rm -f .venv/.fedcls-installed-* && touch "$stamp"
  echo "setup: done in $(( $(date +%s) - start ))s; later runs reuse .venv until pyproject.toml changes" >&2
fi
