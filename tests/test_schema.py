"""The config schema (fedcls.schema) is the one source of defaults, types, ranges, choices and help."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from fedcls.config import compose
from fedcls.errors import ConfigError
from fedcls.help import help_text
from fedcls.schema import Config, CoralConfig, StrategyConfig, defaults, key_of

ROOT = Path(__file__).resolve().parents[1]


def leaves(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every value key of the schema."""
    out = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if kind is StrategyConfig:
            continue
        if dataclasses.is_dataclass(kind):
            out += leaves(kind, f"{prefix}{key_of(f)}.")
        else:
            out.append((f"{prefix}{key_of(f)}", f))
    return out


def test_the_defaults_pass_their_own_checks_and_round_trip():
    assert Config.from_dict(defaults()) == Config()
    assert compose([]) == Config()


@pytest.mark.parametrize("key, field", leaves(), ids=[k for k, _ in leaves()])
def test_every_key_has_help_and_appears_in_help(key, field):
    assert field.metadata.get("help"), f"{key} has no help text"
    name = key.rsplit(".", 1)[-1]
    assert f"{name}: " in help_text("usage")


BOUNDED = [(k, f) for k, f in leaves() if any(f.metadata.get(b) is not None for b in ("ge", "gt", "le", "lt"))]


@pytest.mark.parametrize("key, field", BOUNDED, ids=[k for k, _ in BOUNDED])
def test_a_value_outside_a_keys_range_is_refused_naming_the_key_and_range(key, field):
    meta = field.metadata
    low = meta["ge"] if meta["ge"] is not None else meta["gt"]
    bad = (low - 1 if meta["ge"] is not None else low) if low is not None else \
        (meta["le"] + 1 if meta["le"] is not None else meta["lt"])
    values = defaults()
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[leaf] = bad
    with pytest.raises(ConfigError, match=rf"^{key} must be (>|<|in ).*got {bad}"):
        Config.from_dict(values)


CHOICES = [(k, f) for k, f in leaves() if f.metadata.get("choices")]


@pytest.mark.parametrize("key, field", CHOICES, ids=[k for k, _ in CHOICES])
def test_a_value_outside_a_keys_choices_lists_the_valid_ones(key, field):
    with pytest.raises(ConfigError, match=rf"\({key}\).*Valid: "):
        compose([f"{key}=bogus"])


def test_coral_lambda_is_typed_as_lambda_and_written_as_lambda():
    cfg = compose(["coral.lambda=2"])
    assert cfg.coral.lambda_ == 2.0 and cfg.to_dict()["coral"]["lambda"] == 2.0
    assert CoralConfig().lambda_ == 1.0


def test_a_saved_config_with_an_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'backend.threads'"):
        Config.from_dict({**defaults(), "backend": {**defaults()["backend"], "threads": 2}})


def _attributes_read(package_dirs: tuple[str, ...]) -> set[str]:
    names = set()
    for package in package_dirs:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "schema.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute):
                    names.add(node.attr)
    return names


def test_no_key_silently_does_nothing():
    """Every key of the schema is read as an attribute somewhere in fedcls/ or strategies/."""
    read = _attributes_read(("fedcls", "strategies"))
    unread = [key for key, f in leaves() if f.name not in read]
    assert unread == []
