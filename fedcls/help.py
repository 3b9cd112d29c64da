"""``--help``: scenarios, strategies (with parameters), datasets, models and the config keys."""

from __future__ import annotations

import strategies
from fedcls.config import load_scenario, scenario_names
from fedcls.schema import schema_text


def _scenario_line(name: str) -> str:
    content = load_scenario(name)
    settings = ", ".join(f"{k}={v}" for k, v in _flatten(content).items())
    return f"  {name:<16} {settings}"


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _strategy_lines(name: str) -> list[str]:
    module = strategies.get(name)
    lines = [f"  {name:<16} {strategies.summary(name)}"]
    for key, param in module.PARAMS.items():
        lines.append(f"  {'':<18}strategy.{key}={param.default!r}  {param.help}")
    return lines


def help_text(usage: str) -> str:
    """`usage` (the simulate command's docstring), then scenarios, strategies, datasets, models and config keys."""
    from fedcls.algorithms.models import MODELS
    from fedcls.data.catalog import dataset_names

    lines = [usage.strip(), "",
             "Scenarios (scenario=NAME, files in scenarios/; or scenario_file=path/to/file.yaml):"]
    lines += [_scenario_line(n) for n in scenario_names()]
    lines += ["", "Strategies (strategy=NAME, then strategy.<param>=value):"]
    for name in strategies.names():
        lines += _strategy_lines(name)
    lines += ["", f"Datasets (dataset=NAME): {', '.join(dataset_names())}",
              f"Models (model=NAME): {', '.join(MODELS)}", "",
              "Config keys and their defaults (override any with key=value, nested a.b=c):", ""]
    lines += ["  " + line for line in schema_text()]
    return "\n".join(lines)
