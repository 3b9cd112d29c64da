"""Strategy registry: each module in this package is one aggregation strategy.

A strategy module holds both halves of its algorithm and defines:

- ``PARAMS: dict[str, Param]`` -- its parameters (``strategy.<name>=...``) with defaults;
- ``build_server(params, common, cfg) -> flwr.serverapp.strategy.Strategy`` -- the server half;
  ``common`` holds the sampling and metric-aggregation keyword arguments every FedAvg takes,
  ``cfg`` the typed run config (fedcls.schema.Config: ``cfg.lr``, ``cfg.num_clients``);
- optionally ``client_hooks(config, inbox) -> list[fedcls.algorithms.training.Hook]`` -- the client half,
  hooks into the one local training loop, built from the round's ConfigRecord and the server's
  named tensors (``inbox``: every ArrayRecord of the message besides the weights, as tensors);
- optionally ``evaluation_hooks() -> list[Hook]`` -- hooks a site applies before evaluating
  the global model (their ``local_keys`` and ``before_evaluate``; FedBN's local BatchNorm);
- optionally ``CAPABILITIES: Capabilities`` -- what the strategy's aggregation is and needs
  (an example-weighted mean the cohort executor may pre-aggregate; a BatchNorm model; integer
  buffers it cannot average), checked against the model by fedcls.checks;

Adding a strategy is adding one file here: it is found by its file name. ``get`` reads the
module once into a ``StrategySpec`` (the optional members filled in, the required ones checked),
so no caller probes a module with hasattr.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from fedcls.schema import Config


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


@dataclass(frozen=True)
class Capabilities:
    """What a strategy declares about itself (never listed elsewhere)."""

    weighted_mean: bool = False  # aggregation is the example-weighted mean of the weights (FedAvg's)
    needs_batchnorm: bool = False  # only meaningful with a BatchNorm model (FedBN)
    integer_buffers: bool = True  # can aggregate integer buffers (BatchNorm's num_batches_tracked)
    plain_mean: bool = False  # the new global model IS the mean of the replies' weights (no server optimizer
    # or server state, no records besides the weights): central DP's clip-and-noise covers all it releases


def _no_hooks(config, inbox) -> list:
    return []


def _no_evaluation_hooks() -> list:
    return []


def _no_check(cfg: Config) -> None:
    return None


@dataclass(frozen=True)
class StrategySpec:
    """A strategy module's contract, read once (see the module docstring)."""

    name: str
    doc: str
    PARAMS: dict
    build_server: Callable
    client_hooks: Callable = _no_hooks
    evaluation_hooks: Callable = _no_evaluation_hooks
    check: Callable = _no_check
    CAPABILITIES: Capabilities = Capabilities()

    @classmethod
    def of(cls, name: str, module: ModuleType) -> "StrategySpec":
        missing = [m for m in ("PARAMS", "build_server") if not hasattr(module, m)]
        if missing:
            raise TypeError(f"strategies/{name}.py must define {' and '.join(missing)} (see strategies/__init__.py)")
        optional = {f: getattr(module, f) for f in ("client_hooks", "evaluation_hooks", "check", "CAPABILITIES")
                    if hasattr(module, f)}
        return cls(name, module.__doc__ or "", module.PARAMS, module.build_server, **optional)


def capabilities(name: str) -> Capabilities:
    return get(name).CAPABILITIES


def names() -> list[str]:
    """Names of all strategies (module names in this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> StrategySpec:
    """The strategy called `name`; ConfigError listing valid names otherwise."""
    if name not in names():
        from fedcls.errors import unknown_name

        raise unknown_name("strategy", name, names(), key="strategy")
    return StrategySpec.of(name, importlib.import_module(f"{__name__}.{name}"))


def defaults(name: str) -> dict:
    """Default parameter values of strategy `name`."""
    return {key: p.default for key, p in get(name).PARAMS.items()}


def summary(name: str) -> str:
    """The strategy's name and paper, from its module docstring's first sentence."""
    first = " ".join(get(name).doc.strip().split("\n\n")[0].split())
    return first.split("):")[0] + ")" if "):" in first else first
