"""``python -m fedcls.simulate [key=value ...]``: simulate Non-IID sites with Flower on Ray.

    python -m fedcls.simulate scenario=dirichlet_0.1
    python -m fedcls.simulate scenario=label_2 strategy=fedprox strategy.proximal_mu=0.01 seed=1
    python -m fedcls.simulate scenario=iid --cfg job     # print the resolved config only
    python -m fedcls.simulate resume=results/runs/<run>   # continue a killed run from its checkpoint
    python -m fedcls.simulate --help
    FEDCLS_SERVER=auto python -m fedcls.simulate ...     # run in a warm driver (python -m fedcls.serve)
"""

from __future__ import annotations

import sys

from fedcls.errors import UserError, exit_code_of


def main(argv: list[str] | None = None) -> int:
    from fedcls.engine.warm_driver import forward

    args = list(sys.argv[1:] if argv is None else argv)
    forwarded = forward("simulate", args)  # FEDCLS_SERVER: a warm driver (python -m fedcls.serve) runs it
    return forwarded if forwarded is not None else exit_code_of(lambda: run_args(args), defer_ctrl_c=True)


def run_args(args: list[str]) -> int:
    """The command on `args` in this process (exit code; UserError and Ctrl-C for the caller)."""
    if {"-h", "--help"} & set(args):
        from fedcls.help import help_text

        print(help_text(__doc__))
        return 0
    from fedcls.config import compose
    from fedcls.outputs.results import to_yaml

    show_cfg = "--cfg" in args
    overrides = [a for a in args if a not in ("--cfg", "job")]
    if bad := [a for a in overrides if a.startswith("-")]:
        raise UserError(f"unknown option {bad[0]}; options are --help and --cfg job")
    resume = [a.split("=", 1)[1] for a in overrides if a.startswith("resume=")]
    if resume:
        return _resume(resume[0], [a for a in overrides if not a.startswith("resume=")])
    cfg = compose(overrides)
    if show_cfg:
        print(to_yaml(cfg), end="")
        return 0
    from fedcls.engine.runner import run

    return run(cfg)


def _resume(folder: str, others: list[str]) -> int:
    """Continue the run in `folder` from its checkpoint, with the config it was started with."""
    from pathlib import Path

    from fedcls.config import run_config
    from fedcls.engine.runner import run

    if others:
        raise UserError(f"resume=<run folder> takes the run's own config; drop {others[0]}")
    run_dir = Path(folder).expanduser()
    return run(run_config(run_dir, f"resume={folder}"), resume_dir=run_dir)


if __name__ == "__main__":
    sys.exit(main())
