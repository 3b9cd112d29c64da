import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("FEDCLS_SERVER", None)  # a developer's warm driver (fedcls.serve) must not run the suite's commands


@pytest.fixture
def cli(tmp_path):
    """Run `python -m fedcls.simulate ARGS` in a subprocess; returns CompletedProcess."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, "-m", "fedcls.simulate", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, env=env)

    return run

