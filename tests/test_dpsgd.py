"""Sample-level DP-SGD at each site (fedcls.algorithms.dpsgd): the epsilon reported is Opacus's RDP
accountant's over the site's whole history, the noise sized by a target epsilon spends it, each
sample's gradient is clipped (checked against per-sample gradients computed by hand), training is
reproducible and leaves the runtime's model hook-free, and a DP-SGD site trains alone under the
cohort executor."""

import json
from types import SimpleNamespace

import pytest
import torch
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant
from torch import nn

from fedcls.algorithms import dpsgd
from fedcls.algorithms.training import TrainParams, local_update
from fedcls.apps import client_state
from fedcls.config import compose
from fedcls.data.federated import SiteTensors
from fedcls.outputs.state_codec import encode, restore
from strategy_helpers import identity, train_reply

DP = ["privacy.dp=dpsgd"]


def site(n: int, seed: int = 0, noise: float = 0.0) -> SiteTensors:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=gen)
    y = (x.flatten(1).sum(1) > 0).long()
    return SiteTensors(x, y, x[:2], y[:2], torch.tensor([noise]))


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


def params(cfg, seed: int = 1) -> TrainParams:
    return TrainParams(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, seed)


def rdp_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """Opacus's RDP accountant stepped one step at a time, as its optimizer hook does."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=z, sample_rate=q)
    return accountant.get_epsilon(delta)


def site_round(cfg, model, data, state: dict, seed: int = 1):
    """One round at a site through the client half, its state saved and loaded as the ClientApp does."""
    job = SimpleNamespace(feature_state={})
    result = dpsgd.DpSgdClient(cfg).local_update(job)(model, data, params(cfg, seed), [dpsgd.TrainsAlone()], state)
    context = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})
    client_state.save(context, 0, {**result.state, **job.feature_state}, None, 1)
    return result, client_state.load(context, 0)


def test_reported_epsilon_is_the_rdp_accountants_over_the_sites_whole_history():
    cfg = compose([*DP, "privacy.noise_multiplier=1.1", "batch_size=8", "local_epochs=2", "lr=0.1"])
    data, model = site(40), linear()  # q = 1 / ceil(40 / 8) = 0.2: 5 steps an epoch, 10 a round
    first, state = site_round(cfg, model, data, {"other": {"kept": torch.ones(1)}})
    assert first.metrics["num-steps"] == 10 and first.metrics[dpsgd.STEPS] == 10
    assert first.metrics[dpsgd.NOISE] == 1.1 and first.examples == 40
    assert first.metrics[dpsgd.EPSILON] == pytest.approx(rdp_epsilon(1.1, 0.2, 10, 1e-5), rel=1e-12)
    assert state["other"]["kept"].tolist() == [1.0]  # the rest of the site's state is kept
    second, state = site_round(cfg, model, data, state, seed=2)
    assert second.metrics[dpsgd.STEPS] == 20 and second.metrics["num-steps"] == 10
    assert second.metrics[dpsgd.EPSILON] == pytest.approx(rdp_epsilon(1.1, 0.2, 20, 1e-5), rel=1e-12)
    assert first.metrics[dpsgd.EPSILON] < second.metrics[dpsgd.EPSILON]
    assert {type(v) for v in second.metrics.values()} <= {int, float}  # what a MetricRecord takes


def test_noise_sized_by_target_epsilon_spends_it_by_the_last_round():
    """744 samples in batches of 8: Opacus samples at q = 1/93, takes int(1 / q) = 92 steps an epoch
    (float rounding) and accounts each at 1/92."""
    cfg = compose([*DP, "privacy.target_epsilon=2", "privacy.delta=1e-4", "rounds=1", "local_epochs=1",
                   "batch_size=8", "lr=0.1"])
    z = dpsgd.noise_for_target(cfg, 744)
    assert z > 0 and dpsgd.epoch_steps(744, 8) == 92
    result, _ = site_round(cfg, linear(), site(744), {})
    assert result.metrics["num-steps"] == 92 and result.metrics[dpsgd.NOISE] == z
    spent = result.metrics[dpsgd.EPSILON]
    assert 0.9 * 2 < spent <= 2 and spent == pytest.approx(rdp_epsilon(z, 1 / 92, 92, 1e-4))
    longer = compose([*DP, "privacy.target_epsilon=2", "privacy.delta=1e-4", "rounds=20", "batch_size=8"])
    assert dpsgd.noise_for_target(longer, 744) > z  # more steps for the same budget: more noise
    assert dpsgd.noise_for_target(compose([*DP, "privacy.noise_multiplier=0.7"]), 744) == 0.7  # no target


def test_each_samples_gradient_is_clipped_before_the_mean():
    """q = 1 (batch_size >= n): every sample in the one batch. With z = 0 the update is
    lr * mean_i clip_C(g_i), computed here by hand; its norm is at most lr * C."""
    cfg = compose([*DP, "privacy.noise_multiplier=0", "privacy.clipping_norm=0.01", "batch_size=16",
                   "local_epochs=1", "lr=0.5", "momentum=0"])
    data, start = site(16), linear()
    clipped = []
    for i in range(16):
        model = linear()
        nn.functional.cross_entropy(model(data.train_x[i:i + 1]), data.train_y[i:i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        clipped.append(g * min(1.0, 0.01 / (g.norm().item() + 1e-6)))  # Opacus's factor: C / (norm + 1e-6)
    expected = 0.5 * torch.stack(clipped).mean(0)
    before = torch.cat([p.detach().flatten() for p in start.parameters()])
    dpsgd.private_update(start, data, params(cfg), 0.0, 0.01, [])
    update = before - torch.cat([p.detach().flatten() for p in start.parameters()])
    assert torch.allclose(update, expected, atol=1e-7)
    assert update.norm() <= 0.5 * 0.01 * (1 + 1e-5)
    plain = linear()
    local_update(plain, data, params(cfg), [], {})
    plain_update = before - torch.cat([p.detach().flatten() for p in plain.parameters()])
    assert plain_update.norm() > 10 * 0.5 * 0.01  # unclipped: much larger


def test_same_seed_same_weights_and_the_runtime_model_stays_hook_free():
    cfg = compose([*DP, "privacy.noise_multiplier=1", "batch_size=8", "local_epochs=2", "lr=0.1"])
    data = site(40, noise=0.3)  # the site's feature noise too
    runs = []
    for seed in (5, 5, 6):
        model = linear()
        dpsgd.private_update(model, data, params(cfg, seed), 1.0, 1.0, [])
        runs.append([p.detach().clone() for p in model.parameters()])
        assert type(model) is nn.Sequential
        for module in model.modules():
            assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                        or module._backward_pre_hooks)
        assert not any(hasattr(p, "grad_sample") or hasattr(p, "_forbid_grad_accumulation")
                       for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], [p.detach() for p in linear().parameters()]))


def test_a_site_refuses_hooks_it_would_ignore():
    from strategies.fedprox import ProximalTerm

    cfg = compose(DP)
    update = dpsgd.DpSgdClient(cfg).local_update(SimpleNamespace(feature_state={}))
    with pytest.raises(RuntimeError, match="ProximalTerm would be ignored"):
        update(linear(), site(8), params(cfg), [ProximalTerm(0.1), dpsgd.TrainsAlone()], {})


def test_the_server_keeps_each_sites_epsilon_through_a_checkpoint(monkeypatch):
    identity(monkeypatch)
    cfg = compose([*DP, "privacy.noise_multiplier=1.3", "privacy.delta=1e-6"])
    server = dpsgd.DpSgdServer(cfg)
    assert server.after_round(0, None)["privacy"]["epsilon"] == 0.0
    replies = [train_reply({"w": [0.0]}, 10, site=float(s), **{dpsgd.EPSILON: e, dpsgd.NOISE: 1.3})
               for s, e in ((0, 0.5), (2, 0.8))]
    server.incoming(replies + [train_reply({"w": [0.0]}, 10, site=1.0)])  # a reply without DP metrics
    row = server.after_round(1, None)["privacy"]
    assert row == {"epsilon": 0.8, "delta": 1e-6, "sites": {0: 0.5, 2: 0.8}, "noise_multiplier": 1.3}
    server.incoming([train_reply({"w": [0.0]}, 10, site=0.0, **{dpsgd.EPSILON: 1.1, dpsgd.NOISE: 1.3})])
    resumed = dpsgd.DpSgdServer(cfg)
    restore(resumed, encode(server))
    assert resumed.summary()["privacy"] == {"dp": "dpsgd", "clipping_norm": 1.0, "target_epsilon": None,
                                            "epsilon": 1.1, "delta": 1e-6, "sites": {0: 1.1, 2: 0.8},
                                            "noise_multiplier": 1.3, "noise_multipliers": {0: 1.3, 2: 1.3}}


def test_dpsgd_sites_train_alone_under_the_cohort_executor(tmp_path, monkeypatch):
    """An in-process federation (the cohort worker): every site trains with DP-SGD (else it would
    report no epsilon), and each round's row holds the accountant's epsilon for its steps so far."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose(["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp",
                   "local_epochs=1", "rounds=2", "batch_size=16", "save_model=false", "tracking.tensorboard=false",
                   "checkpoint_every=0", *DP, "privacy.noise_multiplier=0.8"])
    data, lines = federated_data(cfg), []
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lines.append), cfg, data, recorder)
    assert any("trains alone: TrainsAlone has no cohort form" in line for line in lines)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["failures"] for r in rows] == [[], []]
    for rnd, row in enumerate(rows, 1):
        expected = {str(k): rdp_epsilon(0.8, 1 / -(-len(s.train_idx) // 16), rnd * -(-len(s.train_idx) // 16), 1e-5)
                    for k, s in enumerate(data.sites)}
        assert row["privacy"]["sites"] == pytest.approx(expected)
        assert row["privacy"]["epsilon"] == pytest.approx(max(expected.values()))
    assert rows[0]["privacy"]["epsilon"] < rows[1]["privacy"]["epsilon"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == rows[1]["privacy"]["epsilon"]


@pytest.mark.e2e
def test_dpsgd_on_ray_from_the_cli(cli, tmp_path):
    result = cli("dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=2", "model=mlp", "rounds=2",
                 "local_epochs=1", "batch_size=16", "save_model=false", f"output_dir={tmp_path}", *DP,
                 "privacy.noise_multiplier=1")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["failures"] for r in rows] == [[], []]
    assert 0 < rows[0]["privacy"]["epsilon"] < rows[1]["privacy"]["epsilon"]
    assert set(rows[1]["privacy"]["sites"]) == {"0", "1"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["dp"] == "dpsgd" and summary["privacy"]["epsilon"] == rows[1]["privacy"]["epsilon"]


def test_sites_that_add_no_noise_train_and_report_no_guarantee(tmp_path, monkeypatch):
    """z = 0 (clipping only): the replies pass the screening (a metric must be finite: the site sends
    dp-epsilon -1) and the rows say there is no guarantee (epsilon None, valid JSON)."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose(["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp",
                   "local_epochs=1", "rounds=2", "batch_size=16", "save_model=false", "tracking.tensorboard=false",
                   "checkpoint_every=0", *DP, "privacy.noise_multiplier=0"])
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg, federated_data(cfg),
                   recorder)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["failures"] for r in rows] == [[], []]
    assert rows[-1]["privacy"]["epsilon"] is None and set(rows[-1]["privacy"]["sites"].values()) == {None}
