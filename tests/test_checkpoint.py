"""Checkpoints hold data, not code: a resumed run equals the uninterrupted one for strategies and
features with server state, and a checkpoint that would run code when loaded is refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from fedcls.config import compose
from fedcls.errors import UserError
from fedcls.outputs import checkpoint
from fedcls.outputs.results import Recorder
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "rounds=3", "checkpoint_every=1", "save_model=false", "fraction_evaluate=0"]


class Stop(KeyboardInterrupt):
    pass


def _run(cfg, run_dir, resume=None, stop_after: int | None = None) -> list[dict]:
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid

    def echo(line: str) -> None:
        if stop_after is not None and line.startswith(f"round {stop_after:3d}/"):
            raise Stop

    recorder = Recorder(run_dir, cfg, echo=echo)
    try:
        run_federation(CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)], echo=lambda line: None), cfg,
                       federated_data(cfg), recorder, resume, run_dir / checkpoint.CLIENT_DIR)
    except Stop:
        pass
    return recorder.rows


@pytest.mark.parametrize("args", [
    ["strategy=fedadam"], ["strategy=fedavgm"], ["strategy=scaffold"], ["strategy=feddyn"], ["strategy=qfedavg"],
    ["strategy=moon"],
    ["scenario=continual_classes", "rounds=3", "continual.experiences=3", "continual.rounds_per_experience=1",
     "continual.method=ewc", "continual.aggregate_importances=true"],
], ids=["fedadam", "fedavgm", "scaffold", "feddyn", "qfedavg", "moon", "continual-ewc"])
def test_a_run_resumed_from_its_data_checkpoint_equals_the_uninterrupted_run(args, monkeypatch, tmp_path):
    identity(monkeypatch)
    cfg = compose([*SMALL, *args])
    whole = _run(cfg, tmp_path / "whole")
    _run(cfg, tmp_path / "cut", stop_after=2)  # stopped as round 2 ends: its checkpoint is round 1's
    blob = checkpoint.load(tmp_path / "cut")
    assert blob["round"] == 1
    resumed = _run(cfg, tmp_path / "cut", resume=blob)
    keys = ("round", "accuracy", "loss")
    assert [tuple(r[k] for k in keys) for r in resumed] == [tuple(r[k] for k in keys) for r in whole]
    assert [r["train"] for r in resumed] == [r["train"] for r in whole]


class WritesAFile:
    def __reduce__(self):
        return (open, ("/tmp/fedcls-pwned", "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    from pathlib import Path

    marker = Path("/tmp/fedcls-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"version": checkpoint.VERSION, "round": 1, "strategy": WritesAFile()}, tmp_path / checkpoint.FILE)
    with pytest.raises(UserError, match="not a fedcls checkpoint that loads as data"):
        checkpoint.load(tmp_path)
    assert not marker.exists()
    old = {"round": 1, "strategy": pickle.dumps(None), "extensions": pickle.dumps([])}  # version 1: pickles
    torch.save(old, tmp_path / checkpoint.FILE)
    with pytest.raises(UserError, match="format version 1, this fedcls reads version 2"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("args", [
    ["scenario=digits_shift", "coral.enabled=true", "coral.align=recolour", "num_clients=3", "domain.targets=[2]"],
    ["faults.drop_prob=0.1", "faults.straggler_prob=0.1"],
    ["scenario=continual_classes", "continual.method=ewc", "continual.aggregate_importances=true"],
], ids=["coral-recolour-domain", "faults", "continual"])
def test_every_feature_server_half_is_kept_as_data_and_restored(args, tmp_path):
    from fedcls.apps.features import extensions_for
    from fedcls.data.federated import federated_data
    from fedcls.outputs.state_codec import encode, restore

    cfg = compose(args)
    data = federated_data(cfg)
    built = extensions_for(cfg, data)
    assert built
    torch.save([encode(ext) for ext in built], tmp_path / "state.pt")
    fresh = extensions_for(cfg, data)
    for ext, state in zip(fresh, torch.load(tmp_path / "state.pt", weights_only=True)):
        restore(ext, state)
    for old, new in zip(built, fresh):
        assert _same(encode(new), encode(old))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
