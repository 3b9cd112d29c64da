"""A digest of the code a process would run: fedcls's and the strategies' sources, the libraries'
versions and the interpreter. Two processes with the same digest run the same code, so a kept
client actor (fedcls.engine.actor_reserve) or a warm driver (fedcls.engine.warm_driver) serves a
command only when its digest is the command's. Standard library only: a command computes it
before importing anything heavy (~40 ms)."""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata, util
from pathlib import Path

LIBRARIES = ("flwr", "torch", "torchvision", "ray", "numpy", "avalanche-lib")  # what a run imports
PACKAGES = ("fedcls", "strategies")


def code_digest(*extra: object) -> str:
    """12 hex digits over the sources of PACKAGES (found without importing them), LIBRARIES'
    versions, the interpreter and `extra` (JSON-serialisable)."""
    digest = hashlib.sha256(json.dumps([sys.executable, [_installed(n) for n in LIBRARIES], *extra]).encode())
    for package in PACKAGES:
        spec = util.find_spec(package)
        root = Path(spec.origin).parent if spec and spec.origin else None
        for path in sorted(root.rglob("*.py")) if root else ():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
