"""``python -m fedcls.serve [socket=PATH] [key=value ...]``: a warm driver for the day's runs.

    python -m fedcls.serve                              # starts Ray here; or backend.ray_address=auto
    export FEDCLS_SERVER=auto                           # in another shell: commands now run in it
    python -m fedcls.simulate scenario=label_2          # round 1 begins within a second

It imports fedcls, PyTorch and Flower once, holds Ray and warm client actors (for the given
backend.* keys; their data built for the given scenario), and runs each fedcls.simulate or
fedcls.sweep command that reaches it through its socket (default: a folder of the system's temp
directory only you can enter), one at a time, in the command's folder, exactly as the command
would run alone. A command of other code (edited since the server started), another
backend.ray_address, or another PYTHONPATH/CUDA_VISIBLE_DEVICES runs by itself and says why.
Ctrl-C here stops the run in progress, or the server when idle. See fedcls.engine.warm_driver.
"""

import sys

from fedcls.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    from fedcls.engine.warm_driver import serve

    return run_cli(lambda args: serve(args, tools()), argv, __doc__)


def tools() -> dict:
    """The commands a warm driver runs, each by the function its entry point runs it with."""
    from fedcls.simulate import run_args
    from fedcls.studies.sweep import sweep

    return {"simulate": run_args, "sweep": sweep}


if __name__ == "__main__":
    sys.exit(main())
