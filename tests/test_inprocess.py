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
    import torch

    threads = torch.get_num_threads()
    plain = one_round(tmp_path, "plain", f"backend.num_cpus={threads + 1}")
    masked = one_round(tmp_path, "secagg", "privacy.secagg=true")
    assert torch.get_num_threads() == threads  # the driver's own, after runs on threads + 1 and on 1
    assert masked["loss"] == pytest.approx(plain["loss"], rel=1e-3)
    assert masked["bytes"]["from_sites"] > 1.5 * plain["bytes"]["from_sites"]  # the masked exchanges happened
    assert sorted(s for s, _ in masked["trained"]) == [0, 1, 2] and masked["failures"] == []


def test_a_runs_torch_settings_hold_within_it_and_the_drivers_come_back():
    """The inprocess executor trains on backend.num_cpus threads in the driver, which may go on
    (a sweep, a warm driver): its own settings come back after the run."""
    import torch

    from fedcls.apps import torch_settings
    from fedcls.apps.torch_settings import applied, applied_within, apply_torch_settings

    threads, tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    try:
        apply_torch_settings(threads + 1, not tf32)
        torch.set_num_threads(threads)  # set behind this module's back: the run's settings are set anyway
        torch.backends.cudnn.allow_tf32 = tf32
        before = applied()
        with applied_within(threads + 1, not tf32):
            assert torch.get_num_threads() == threads + 1 and torch.backends.cudnn.allow_tf32 is (not tf32)
            assert applied() == {"num_threads": threads + 1, "tf32": not tf32}
        assert torch.get_num_threads() == threads and torch.backends.cudnn.allow_tf32 is tf32 and applied() == before
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.allow_tf32 = tf32
        torch_settings._applied.clear()  # what this test set behind the module's back is not the process's
