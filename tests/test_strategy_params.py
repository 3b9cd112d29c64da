"""Every parameter a strategy accepts changes what it does: a strategy.<param> that is accepted
and ignored (FedOpt's eta_l used to be one) would let a paper report a setting that never ran."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

import strategies
from fedcls.apps.federation import build_strategy
from fedcls.config import compose
from fedcls.engine.cohort_grid import CohortGrid
from strategy_helpers import identity, record, train_reply

CLIENTS = 7  # Bulyan needs 4f+3 replies for f=1
EXTRA_CONFIG = {"fedbn": ["model=simple_cnn_bn"]}


def perturbed(param: strategies.Param):
    """A valid value different from the default."""
    if isinstance(param.default, bool):
        return not param.default
    if isinstance(param.default, str):
        assert param.choices, "a string parameter lists its choices"
        return next(c for c in param.choices if c != param.default)
    value = param.default * 2 if param.default else 1
    if param.maximum is not None and value > param.maximum:
        value = (param.default + (param.minimum or 0.0)) / 2
    return type(param.default)(value)


def two_rounds(name: str, overrides: list[str]) -> tuple[list, dict]:
    """(the train configs sent, the aggregated weights) of two rounds on fixed random replies
    (two: server momentum has no effect in the first)."""
    cfg = compose([f"strategy={name}", f"num_clients={CLIENTS}", *EXTRA_CONFIG.get(name, []), *overrides])
    strategy = build_strategy(cfg)
    rng = np.random.default_rng(0)
    arrays, configs = record(w=rng.normal(size=(3, 4))), []
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}),
                                                 CohortGrid(CLIENTS, workers=[])))
        configs += [dict(m.content["config"]) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies(name, arrays, len(messages), rng))
    return configs, {k: v.numpy() for k, v in arrays.items()}


def replies(name: str, arrays: ArrayRecord, count: int, rng) -> list:
    """Clients of growing size and step count, moving the weights by growing offsets (spaced
    so that the number of tolerated Byzantine clients changes whom (Multi-)Krum selects)."""
    w = arrays["w"].numpy()
    offsets = [2.0 ** i if name == "multikrum" else i * (i + 1) / 2 for i in range(count)]
    extra = (lambda: {"scaffold.delta_c": {"w": rng.normal(size=w.shape)}}) if name == "scaffold" else dict
    return [train_reply({"w": w + offsets[i] + 0.01 * rng.normal(size=w.shape)}, n=10 * (i + 1),
                        extra=extra(), **{"num-steps": float(i + 1), "initial_loss": 1.0 + i})
            for i in range(count)]


CASES = [(name, key) for name in strategies.names() for key in strategies.get(name).PARAMS]


@pytest.mark.parametrize("name, key", CASES)
def test_every_accepted_parameter_changes_the_round(name, key, monkeypatch):
    identity(monkeypatch)
    value = perturbed(strategies.get(name).PARAMS[key])
    base_configs, base = two_rounds(name, [])
    configs, changed = two_rounds(name, [f"strategy.{key}={value}"])
    same_weights = base.keys() == changed.keys() and all(np.array_equal(base[k], changed[k]) for k in base)
    assert configs != base_configs or not same_weights, (
        f"strategy.{key}={value} changed neither what {name} sends nor what it aggregates")
