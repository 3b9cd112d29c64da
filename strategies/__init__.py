"""Strategy registry: each module in this package is one aggregation strategy.

A strategy module holds both halves of its algorithm and defines:

- ``PARAMS: dict[str, Param]`` -- its parameters (``strategy.<name>=...``) with defaults;
- ``build_server(params, common, cfg) -> flwr.serverapp.strategy.Strategy`` -- the server half;
  ``common`` holds the sampling and metric-aggregation keyword arguments every FedAvg takes,
  ``cfg`` the whole run config;
- optionally ``client_hooks(config, inbox) -> list[fedcls.algorithms.training.Hook]`` -- the client half,
  hooks into the one local training loop, built from the round's ConfigRecord and the server's
  named tensors (``inbox``: every ArrayRecord of the message besides the weights, as tensors);
- optionally ``evaluation_hooks() -> list[Hook]`` -- hooks a site applies before evaluating
  the global model (their ``local_keys`` and ``before_evaluate``; FedBN's local BatchNorm);
- optionally ``check(cfg) -> str | None`` -- an error message when the config cannot work
  with this strategy (FedBN without BatchNorm).

Adding a strategy is adding one file here: it is found by its file name.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Param:
    """One strategy parameter: default, help text and valid range."""

    default: float | int | str | bool
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()  # the valid values of a string parameter

    def check(self, key: str, value: object) -> str | None:
        """Return an error message for an invalid value, else None."""
        if isinstance(self.default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) == isinstance(self.default, bool)
        elif isinstance(self.default, (int, float)):
            ok = isinstance(value, (int, float)) and (
                isinstance(self.default, float) or isinstance(value, int))
        else:
            ok = isinstance(value, type(self.default))
        if not ok:
            return f"{key} must be {type(self.default).__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{key} must be one of {' | '.join(map(str, self.choices))}, got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"{key} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{key} must be <= {self.maximum}, got {value}"
        return None


def names() -> list[str]:
    """Names of all strategies (module names in this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The strategy module called `name`; ConfigError listing valid names otherwise."""
    if name not in names():
        from fedcls.errors import unknown_name

        raise unknown_name("strategy", name, names(), key="strategy")
    return importlib.import_module(f"{__name__}.{name}")


def defaults(name: str) -> dict:
    """Default parameter values of strategy `name`."""
    return {key: p.default for key, p in get(name).PARAMS.items()}


def summary(name: str) -> str:
    """The strategy's name and paper, from its module docstring's first sentence."""
    first = " ".join((get(name).__doc__ or "").strip().split("\n\n")[0].split())
    return first.split("):")[0] + ")" if "):" in first else first
