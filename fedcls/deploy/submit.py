"""``python -m fedcls.submit [superlink=NAME] [app=DIR] [key=value ...]``: run a fedcls federation on a
SuperLink and exit with its outcome.

    python -m fedcls.submit superlink=rehearsal scenario=dirichlet_0.5 num_clients=3 rounds=5

Flower's ``flwr run`` exits 0 as soon as the SuperLink accepts a run, whatever becomes of it. This
checks the config first (a bad key exits 2 before anything is sent), starts the run with ``flwr
run`` (the ``key=value`` pairs become the run config's ``overrides``), streams its log with ``flwr
log``, reads its final status with ``flwr ls`` and exits 0 only when it completed; 1 when it
failed or was stopped, with Flower's reason. ``superlink`` names a connection in Flower's
config.toml (default: its default one); ``app`` the fedcls project folder (default: this one).
Hand-written: Flower's CLI has no wait-for-the-outcome mode.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fedcls.errors import UserError, run_cli

OWN_KEYS = ("superlink", "app")
STATUS_WAIT_S = 120.0  # after the log ends, how long the SuperLink may take to mark the run finished


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, __doc__)


def _main(args: list[str]) -> int:
    own = dict(a.split("=", 1) for a in args if a.split("=", 1)[0] in OWN_KEYS)
    overrides = [a for a in args if a.split("=", 1)[0] not in OWN_KEYS]
    from fedcls.config import compose

    compose(overrides)  # a bad key or value exits 2 here, before the SuperLink sees it
    app = Path(own.get("app", Path(__file__).resolve().parents[2])).expanduser()
    if not (app / "pyproject.toml").is_file():
        raise UserError(f"{app} holds no pyproject.toml: give the fedcls project folder with app=<folder>")
    link = [own["superlink"]] if own.get("superlink") else []
    run_id = start_run(app, link, overrides)
    print(f"run {run_id} started; its log follows", flush=True)
    subprocess.run([_flwr(), "log", run_id, *link], check=False)
    status, details = final_status(run_id, link)
    print(f"run {run_id}: {status}" + (f" ({details})" if details else ""), flush=True)
    return 0 if status == "finished:completed" else 1


def _flwr() -> str:
    found = shutil.which("flwr") or str(Path(sys.executable).parent / "flwr")
    if not Path(found).exists():
        raise UserError("Flower's `flwr` command is not installed here: install fedcls (bash scripts/setup.sh)")
    return found


def _flwr_json(args: list[str]) -> dict:
    """Run a `flwr` command with --format json; its JSON answer (a UserError if it failed)."""
    done = subprocess.run([_flwr(), *args, "--format", "json"], capture_output=True, text=True, check=False)
    answer = _last_json(done.stdout)
    if done.returncode != 0 or not answer or not answer.get("success"):
        reason = (answer or {}).get("error-message") or (done.stderr or done.stdout).strip()[-500:]
        raise UserError(f"`flwr {args[0]}` failed: {reason}")
    return answer


def _last_json(text: str) -> dict | None:
    """The last JSON object in `text` that starts a line (Flower prints it indented over many lines)."""
    found, decoder, at = None, json.JSONDecoder(), 0
    while (at := text.find("{", at)) >= 0:
        if at == 0 or text[at - 1] == "\n":
            try:
                found, end = decoder.raw_decode(text, at)
                at = end
                continue
            except ValueError:
                pass
        at += 1
    return found


def start_run(app: Path, link: list[str], overrides: list[str]) -> str:
    run_config = f"overrides={json.dumps(shlex.join(overrides))}"  # a TOML string: any quotes survive
    answer = _flwr_json(["run", str(app), *link, "--run-config", run_config])
    return str(answer["run-id"])


def final_status(run_id: str, link: list[str]) -> tuple[str, str]:
    """(status, details) once the SuperLink marks the run finished (or what it says at the deadline)."""
    deadline = time.time() + STATUS_WAIT_S
    while True:
        run = _flwr_json(["ls", "--run-id", run_id, *link])["runs"][0]
        if run["status"].startswith("finished") or time.time() > deadline:
            return run["status"], run.get("status-details") or ""
        time.sleep(1.0)
