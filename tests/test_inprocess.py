"""The inprocess executor (fedcls.engine.inprocess): Flower's ClientApp object, its mods included,
called in this process. (Its numbers equal the clientapp executor's on Ray: tests/test_e2e.py.)"""

import json

import pytest

from fedcls.config import compose
from fedcls.engine.runner import run

BASE = ["backend.executor=inprocess", "num_clients=3", "rounds=1", "local_epochs=1", "model=mlp",
        "fraction_evaluate=0", "save_model=false", "plots=none"]


def one_round(tmp_path, name: str, *extra: str) -> dict:
    cfg = compose([*BASE, *extra, f"output_dir={tmp_path}", f"run_id={name}"])
    assert run(cfg, echo=None) == 0
    (row,) = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return row


def test_the_clientapps_mods_run_in_process_secagg_included(tmp_path):
    """SecAgg+ is a mod of the ClientApp: through the inprocess executor the server's SecAgg+
    workflow gets the sites' masked vectors (more bytes back, the protocol's exchanges) and their
    unmasked mean equals the plain mean within the quantisation."""
    plain, masked = one_round(tmp_path, "plain"), one_round(tmp_path, "secagg", "privacy.secagg=true")
    assert masked["loss"] == pytest.approx(plain["loss"], rel=1e-3) and masked["loss"] != plain["loss"]
    assert masked["bytes"]["from_sites"] > 1.5 * plain["bytes"]["from_sites"]
    assert sorted(s for s, _ in masked["trained"]) == [0, 1, 2] and masked["failures"] == []
