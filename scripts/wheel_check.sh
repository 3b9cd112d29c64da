#!/usr/bin/env bash
# CI: build fedcls's wheel, install it (not editable) into a fresh venv and, from a folder outside
# the repository, print a scenario's config and run a 1-round simulation. Non-zero on any failure.
# Builds from a copy of the sources in a temp folder, so the repository is left untouched.
# By default the fresh venv gets the wheel alone and borrows the dependencies already installed in
# .venv (a .pth file after its own site-packages); WHEEL_CHECK_FULL=1 lets pip install them all.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src" "$tmp/wheels" "$tmp/elsewhere"
tar -cf - --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml README.md fedcls strategies scenarios \
  | tar -xf - -C "$tmp/src"
start=$SECONDS
.venv/bin/python -m pip wheel --quiet --no-deps -w "$tmp/wheels" "$tmp/src"
.venv/bin/python -m venv --without-pip "$tmp/venv"  # from a venv: the base interpreter, nothing installed
py="$tmp/venv/bin/python"
pip=(.venv/bin/python -m pip --python "$py")  # .venv's pip, installing into the fresh venv
if [ "${WHEEL_CHECK_FULL:-0}" = 1 ]; then
  "${pip[@]}" install --quiet "$tmp"/wheels/fedcls-*.whl
else
  "${pip[@]}" install --quiet --no-deps "$tmp"/wheels/fedcls-*.whl
  purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
  .venv/bin/python -c "$purelib" > "$("$py" -c "$purelib")/fedcls_deps.pth"
fi
"${pip[@]}" check  # the wheel's declared requirements (and theirs) are met
echo "wheel_check: wheel built and installed in $((SECONDS - start)) s"

cd "$tmp/elsewhere"  # nothing of the repository on sys.path from here
"$py" - <<'PY'
import sys, fedcls, scenarios, strategies  # from the wheel in the fresh venv, not the repository
for m in (fedcls, scenarios, strategies):
    assert m.__file__.startswith(sys.prefix), f"{m.__name__} imported from {m.__file__}, not the wheel"
PY
"$tmp/venv/bin/fedcls" simulate scenario=dirichlet_0.1 --cfg job > cfg.yaml
grep -q '^scenario: dirichlet_0.1$' cfg.yaml && grep -q '^  alpha: 0.1$' cfg.yaml \
  || { echo "wheel_check: --cfg job did not print scenario dirichlet_0.1" >&2; cat cfg.yaml >&2; exit 1; }
"$py" -m fedcls simulate scenario=iid rounds=1 local_epochs=1 num_clients=2 model=mlp \
  save_model=false checkpoint_every=0 run_id=wheel output_dir="$tmp/runs"
[ -s "$tmp/runs/wheel/metrics.jsonl" ] || { echo "wheel_check: the 1-round run wrote no metrics" >&2; exit 1; }
echo "wheel_check: passed in $((SECONDS - start)) s (wheel install, --cfg job, 1-round simulation)"
