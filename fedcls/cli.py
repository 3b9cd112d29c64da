"""``fedcls <command> [args ...]``: the ``fedcls`` console script (also ``python -m fedcls``).

    fedcls simulate scenario=dirichlet_0.1           # = python -m fedcls.simulate scenario=dirichlet_0.1
    fedcls sweep name=STUDY strategy=fedavg,fedprox  # = python -m fedcls.sweep ...
    fedcls help simulate                             # a command's own --help

Each command hands its arguments to the ``main(argv)`` of the tool's module, imported only when
that command runs, so ``fedcls --help`` starts in a blink.
"""

from __future__ import annotations

import importlib
import sys

import fedcls
from fedcls.errors import exit_code_of, unknown_name

# command -> (module whose main(argv) runs it, one line for the command list)
COMMANDS = {
    "simulate": ("fedcls.simulate",
                 "run one simulation: scenario=NAME key=value ... (--cfg job prints its config)"),
    "sweep": ("fedcls.sweep", "run a grid of simulations as one study: name=STUDY key=a,b,c ..."),
    "serve": ("fedcls.serve", "a warm driver: commands run with FEDCLS_SERVER set run in it, skipping start-up"),
    "report": ("fedcls.report", "tables and plots of a study, from its run folders: STUDY_DIR"),
    "explain": ("fedcls.explain", "Grad-CAM heatmaps of a run's global model per site: RUN_DIR"),
    "prepare-sites": ("fedcls.prepare_sites", "write each site of a scenario as a site data folder: out=DIR"),
    "submit": ("fedcls.submit", "run on a SuperLink, stream its log, exit with its outcome: superlink=NAME ..."),
    "certs": ("fedcls.certs", "CA, SuperLink certificate and SuperNode keys for a TLS rehearsal: out=DIR"),
}


def usage() -> str:
    """The command list that ``fedcls``, ``fedcls --help`` and ``fedcls help`` print."""
    width = max(map(len, COMMANDS))
    lines = ["usage: fedcls <command> [args ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "fedcls <command> --help (or fedcls help <command>) shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command named first in `argv` (default: sys.argv) with the rest; its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["help"] and len(args) > 1:
        args = [args[1], "--help"]
    if not args or args[0] in ("help", "-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"fedcls {fedcls.__version__}")
        return 0
    return exit_code_of(lambda: _dispatch(args[0], args[1:]))


def _dispatch(command: str, args: list[str]) -> int:
    if command not in COMMANDS:
        raise unknown_name("command", command, list(COMMANDS))
    return importlib.import_module(COMMANDS[command][0]).main(args)
