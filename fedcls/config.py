"""Config: schema defaults + scenario file + command-line overrides -> one validated, typed Config.

Overrides use Hydra's override grammar (``key=value``, nested ``a.b=c``), parsed by Hydra's own
parser, onto the plain dict of the schema's defaults (fedcls.schema); the result is typed and
checked by ``Config.from_dict``, then across keys by fedcls.checks. ``strategy=NAME`` and ``model=NAME`` select a group: they set ``<group>.name`` (a new
strategy replaces the whole ``strategy`` node, as a Hydra group choice would) before the other
overrides apply, so their order on the command line does not matter.
"""

from __future__ import annotations

import difflib
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

import strategies
from fedcls.errors import ConfigError, UserError, unknown_name
from fedcls.schema import Config, defaults

SCENARIO_DIR = Path(str(resources.files("scenarios")))  # package data: found in a wheel install too
GROUPS = ("strategy", "model")  # dict nodes chosen by name: `strategy=fedprox` -> strategy.name


def scenario_names() -> list[str]:
    """Names of the scenario files in scenarios/."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def load_scenario(name: str) -> dict:
    """A scenario file's content, by name (scenarios/NAME.yaml)."""
    if not SCENARIO_NAME.fullmatch(name) or name.endswith((".yaml", ".yml")):
        raise ConfigError(f"scenario={name} is not a scenario name: scenario= takes a name from scenarios/ "
                          f"(python -m fedcls.simulate --help lists them); give a file of your own as "
                          f"scenario_file=<path to .yaml>")
    path = SCENARIO_DIR / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("scenario", name, scenario_names(), key="scenario")
    return _read_scenario(path)


def load_scenario_file(file: str) -> dict:
    """The content of a scenario file of the user's own (scenario_file=<path>)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"scenario_file={file}: no such file; give the path of a .yaml file of config keys")
    return _read_scenario(path)


def _read_scenario(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"scenario file {path} is not valid UTF-8 YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"scenario file {path} must hold a mapping of config keys")
    if {"scenario", "scenario_file"} & set(content):
        raise ConfigError(f"scenario file {path} names another scenario; a scenario file holds config keys only")
    return content


def parse_override(arg: str):
    """One Hydra-grammar override (the one parser of simulate and sweep); ConfigError if malformed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (override,) = OverridesParser.create().parse_overrides([arg])
    except HydraException as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"cannot parse '{arg}': {first}. Overrides look like key=value.") from None
    return override


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """(key, value) pairs from Hydra-grammar overrides; sweeps are refused here."""
    pairs = []
    for arg in args:
        override = parse_override(arg)
        if override.is_sweep_override():
            raise ConfigError(f"'{arg}' is a sweep; run grids with python -m fedcls.sweep")
        pairs.append((override.key_or_group.lstrip("+"), override.value()))
    return pairs


def compose(args: list[str]) -> Config:
    """Resolved, validated config from command-line overrides."""
    return load_config(_composed_values(args))


def _composed_values(args: list[str]) -> dict:
    """The plain dict `args` compose: schema defaults, the scenario, group choices, then keys."""
    pairs = parse_overrides(args)
    cfg = defaults()
    scenario = next((v for k, v in reversed(pairs) if k == "scenario"), None)
    file = next((v for k, v in reversed(pairs) if k == "scenario_file"), None)
    if scenario is not None and file is not None:
        raise ConfigError("give scenario=NAME or scenario_file=PATH, not both")
    if scenario is not None:
        _merge(cfg, load_scenario(str(scenario)), f"scenarios/{scenario}.yaml")
        cfg["scenario"] = str(scenario)
    if file is not None:
        _merge(cfg, load_scenario_file(str(file)), str(file))
        cfg["scenario_file"] = str(file)
    for key, value in pairs:  # group choices first, like Hydra's defaults list
        if key in GROUPS:
            _choose_group(cfg, key, value)
    for key, value in pairs:
        if key not in GROUPS and key not in ("scenario", "scenario_file"):
            _set(cfg, key, value)
    return cfg


RERUN_SKIPS = ("scenario", "scenario_file", "run_id", "output_dir")  # a rerun gets a folder of its own


def rerun_args(cfg: Config) -> list[str]:
    """The overrides that compose `cfg` again (its run_id and output_dir aside): its scenario or
    scenario file, strategy and model, then each key whose value differs from what those give."""
    head = ([f"scenario={cfg.scenario}"] if cfg.scenario else
            [f"scenario_file={cfg.scenario_file}"] if cfg.scenario_file else [])
    head += [f"strategy={cfg.strategy.name}", f"model={cfg.model.name}"]
    values = _composed_values(head)
    values["strategy"] = _with_strategy_defaults(values["strategy"])
    base, wanted = _leaves(Config.from_dict(values).to_dict()), _leaves(cfg.to_dict())
    return head + [f"{key}={hydra_value(value)}" for key, value in wanted.items()
                   if key not in RERUN_SKIPS and (key not in base or base[key] != value)]


def rerun_command(cfg: Config, tool: str = "fedcls.simulate") -> str:
    """A shell command that reruns `cfg` from any folder (scenario files: from where it was given)."""
    return f"python -m {tool} {shlex.join(rerun_args(cfg))}"


def hydra_value(value: Any) -> str:
    """`value` in the override grammar parse_override reads back to it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_][\w./-]*", text) and text.lower() not in ("null", "true", "false", "nan", "inf")
    return text if plain else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def load_config(values: dict) -> Config:
    """The typed, validated config of a plain dict (composed here, or a run's config.yaml)."""
    node = values.get("strategy", {"name": "fedavg"})
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict):
        raise ConfigError(f"strategy must be a strategy name or a section (name: ..., <param>: ...), got {node!r}")
    values = {**values, "strategy": _with_strategy_defaults(node)}
    cfg = Config.from_dict(values)
    validate(cfg)
    return cfg


def run_config(run_dir: Path, what: str) -> Config:
    """The config of the run in `run_dir` (its config.yaml); UserError naming `what` (e.g.
    "resume=results/runs/x") when the folder is not a run's or its config is unreadable."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{what}: no run folder there (it has no config.yaml); name a folder under results/runs/")
    try:
        values = yaml.safe_load((run_dir / "config.yaml").read_text())
        if not isinstance(values, dict):
            raise TypeError("it holds no mapping of config keys")
        return load_config(values)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{run_dir / 'config.yaml'} is not a readable fedcls config ({err})") from None


def _choose_group(cfg: dict, group: str, name: Any) -> None:
    if isinstance(name, dict):
        _merge(cfg, {group: name}, "the command line")
    elif group == "strategy":
        cfg["strategy"] = {"name": name}
    else:
        cfg[group]["name"] = name


def _set(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise _unknown_key(".".join(parents[: i + 1]), cfg)
        node = node[part]
    # strategy params are checked against the strategy later, a Flower partitioner's arguments by it
    free = parents[:1] == ["strategy"] or parents == ["partition", "args"]
    if leaf not in node and not free:
        raise _unknown_key(dotted, cfg)
    if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
        raise ConfigError(f"'{dotted}' is a section, not a value; set one of its keys, "
                          f"e.g. {dotted}.{next(iter(node[leaf]))}=...")
    node[leaf] = value


def _merge(cfg: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if dotted == "strategy" and isinstance(value, dict):  # a named strategy replaces the node
            cfg["strategy"] = value if "name" in value else {**cfg["strategy"], **value}
        elif isinstance(value, dict) and isinstance(cfg.get(key), dict):
            _merge(cfg[key], value, source, f"{dotted}.")
        elif key not in cfg:
            raise ConfigError(f"{source}: {_unknown_key(dotted, defaults())}")
        else:
            cfg[key] = value


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key(dotted: str, cfg: dict) -> ConfigError:
    close = difflib.get_close_matches(dotted, _flat_keys(cfg), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{dotted}'.{hint} "
                       "See python -m fedcls.simulate --help for the keys.")


CLIENT_LR_NAMES = ("eta_l", "client_lr", "local_lr")


def _with_strategy_defaults(node: dict) -> dict:
    name = node.get("name")
    module = strategies.get(str(name))
    for key in node:
        if key != "name" and key not in module.PARAMS:
            close = (difflib.get_close_matches(key, list(module.PARAMS), n=1)
                     or [p for p in module.PARAMS if key in p])
            hint = f" Did you mean 'strategy.{close[0]}'?" if close else ""
            if key in CLIENT_LR_NAMES:  # the paper's client step size is the run's lr
                hint = " The clients' learning rate is the run's lr (e.g. lr=0.01)."
            valid = ", ".join(module.PARAMS) or "none"
            raise ConfigError(f"strategy '{name}' has no parameter '{key}'.{hint} "
                              f"Its parameters: {valid}.")
    return {"name": name, **strategies.defaults(str(name)), **node}


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the key for any wrong strategy parameter, name or impossible value
    (types, choices and ranges of single keys were checked by Config.from_dict)."""
    module = strategies.get(cfg.strategy.name)
    for key, param in module.PARAMS.items():
        if (message := param.check(f"strategy.{key}", cfg.strategy.params[key])) is not None:
            raise ConfigError(message)
    from fedcls.checks import check_capabilities, check_values

    check_values(cfg)
    check_capabilities(cfg)
    if (message := module.check(cfg)) is not None:
        raise ConfigError(message)
