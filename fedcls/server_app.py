"""The Flower ServerApp: runs the round loop (fedcls.federation) and records results.

``make_server_app(cfg, recorder)`` is what simulations use. The module-level ``app`` serves
``flwr run``: it composes the config from the run config's ``scenario`` and ``overrides`` keys
(pyproject's [tool.flwr.app.config]) and writes a run folder like a simulation does.
"""

from __future__ import annotations

import shlex

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcls.config import compose
from fedcls.federation import run_federation
from fedcls.results import Recorder, new_run_dir


def run_and_record(grid: Grid, cfg: dict, recorder: Recorder) -> None:
    """Run the federation; the summary says whether it completed, and the model is saved."""
    try:
        arrays = run_federation(grid, cfg, recorder)
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        recorder.finish(status, error=f"{type(err).__name__}: {err}")
        raise
    recorder.finish("completed", state_dict=arrays.to_torch_state_dict())


def make_server_app(cfg: dict, recorder: Recorder) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_and_record(grid, cfg, recorder)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    args = [f"scenario={context.run_config['scenario']}",
            *shlex.split(str(context.run_config.get("overrides", "")))]
    cfg = compose([a for a in args if a != "scenario="])
    run_and_record(grid, cfg, Recorder(new_run_dir(cfg), cfg))
