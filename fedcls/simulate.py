"""``python -m fedcls.simulate [key=value ...]``: simulate Non-IID sites with Flower on Ray.

    python -m fedcls.simulate scenario=dirichlet_0.1
    python -m fedcls.simulate scenario=label_2 strategy=fedprox strategy.proximal_mu=0.01 seed=1
    python -m fedcls.simulate scenario=iid --cfg job     # print the resolved config only
    python -m fedcls.simulate --help
"""

from __future__ import annotations

import sys

from fedcls.errors import UserError, exit_code_of


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return exit_code_of(lambda: _main(args))


def _main(args: list[str]) -> int:
    if {"-h", "--help"} & set(args):
        from fedcls.help import help_text

        print(help_text())
        return 0
    from fedcls.config import compose, to_yaml

    show_cfg = "--cfg" in args
    overrides = [a for a in args if a not in ("--cfg", "job")]
    if bad := [a for a in overrides if a.startswith("-")]:
        raise UserError(f"unknown option {bad[0]}; options are --help and --cfg job")
    cfg = compose(overrides)
    if show_cfg:
        print(to_yaml(cfg), end="")
        return 0
    from fedcls.runner import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
