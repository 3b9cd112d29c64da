"""The Flower ServerApp: runs the round loop (fedcls.apps.federation) and records results.

``run_and_record`` is the body of every ServerApp: a simulation's (fedcls.engine.simulation, over a
grid it can stop on Ctrl-C) and the module-level ``app``, which serves ``flwr run``: it composes the
config from the run config's ``scenario`` and ``overrides`` keys (pyproject's
[tool.flwr.app.config]) and writes a run folder like a simulation does.
"""

from __future__ import annotations

import shlex
import shutil

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcls.apps.federation import run_federation
from fedcls.config import compose, rerun_command
from fedcls.data.federated import FederatedData, federated_data
from fedcls.outputs import checkpoint
from fedcls.outputs.results import Recorder, new_run_dir
from fedcls.schema import Config


def run_and_record(grid: Grid, cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None = None,
                   simulated: bool = True) -> None:
    """Run the federation; the summary says whether it completed, and the model is saved.
    A simulation's clients keep their state under the run folder for checkpoints."""
    state_dir = recorder.run_dir / checkpoint.CLIENT_DIR if simulated and cfg.checkpoint_every else None
    try:
        arrays = run_federation(grid, cfg, data, recorder, resume, state_dir)
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        recorder.finish(status, error=f"{type(err).__name__}: {err}")
        if not simulated and status == "failed":  # flwr run: no runner records it (fedcls.engine.runner)
            recorder.record_error(err, status)
        raise
    recorder.finish("completed", state_dict=arrays.to_torch_state_dict())
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)  # only a resume needs it


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    args = [f"scenario={context.run_config['scenario']}",
            *shlex.split(str(context.run_config.get("overrides", "")))]
    cfg = compose([a for a in args if a != "scenario="])
    recorder = Recorder(new_run_dir(cfg), cfg, command=rerun_command(cfg, "fedcls.submit"))
    run_and_record(grid, cfg, federated_data(cfg), recorder, simulated=False)
