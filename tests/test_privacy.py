"""Central differential privacy (fedcls.algorithms.privacy): Flower's clipping and noise as the
mechanism defines them, the uniform mean, epsilon equal to the RDP formula, Flower's client-side
clipping mod, seeded noise, refused combinations, and a real federation that records epsilon."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedcls.algorithms import privacy
from fedcls.apps.federation import build_strategy
from fedcls.config import compose
from fedcls.errors import ConfigError
from strategy_helpers import identity, train_reply

DP = ["num_clients=4", "privacy.dp=central", "privacy.clipping_norm=1.0"]


def aggregate(cfg, global_w, updates, sizes, seed_round=1):
    """The wrapped strategy's aggregate of replies global + update (each of `sizes` examples), as the
    round loop does it: the server half first (uniform weights, seeded noise), then the strategy."""
    strategy, server = build_strategy(cfg), privacy.CentralPrivacyServer(cfg)
    arrays = ArrayRecord({"w": Array(np.asarray(global_w, np.float32))})
    server.before_train(seed_round, arrays, None, None)
    strategy.current_arrays = arrays  # what configure_train stores (no grid here)
    replies = [train_reply({"w": np.asarray(global_w) + np.asarray(u)}, n) for u, n in zip(updates, sizes)]
    new, _ = strategy.aggregate_train(seed_round, server.incoming(replies))
    return new["w"].numpy(), server


def test_each_update_is_clipped_to_the_norm_and_the_mean_is_uniform(monkeypatch):
    identity(monkeypatch)
    cfg = compose([*DP, "privacy.noise_multiplier=0"])
    updates = [[3.0, 4.0], [0.3, 0.4], [0.0, 0.1], [-6.0, 8.0]]  # norms 5, 0.5, 0.1, 10
    out, _ = aggregate(cfg, [1.0, 1.0], updates, sizes=[1000, 10, 10, 10])
    clipped = np.array([[0.6, 0.8], [0.3, 0.4], [0.0, 0.1], [-0.6, 0.8]])  # u * min(1, C / |u|)
    assert out.tolist() == pytest.approx((1.0 + clipped.mean(axis=0)).tolist(), abs=1e-6)  # not weighted by size


def test_the_noise_std_is_z_times_c_over_the_sampled_sites(monkeypatch):
    identity(monkeypatch)
    cfg = compose([*DP, "privacy.noise_multiplier=2.0", "privacy.clipping_norm=0.5"])
    size = 200_000
    tiny = np.full(size, 1e-9)  # a zero update would divide by zero in Flower 1.42's clipping
    out, _ = aggregate(cfg, np.zeros(size), [tiny] * 4, sizes=[5] * 4)
    assert out.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.01)  # z C / n = 0.25
    assert abs(out.mean()) < 0.25 * 5 / np.sqrt(size)
    again, _ = aggregate(cfg, np.zeros(size), [tiny] * 4, sizes=[5] * 4)
    other_round, _ = aggregate(cfg, np.zeros(size), [tiny] * 4, sizes=[5] * 4, seed_round=2)
    assert np.array_equal(out, again) and not np.array_equal(out, other_round)  # seeded by (seed, round)


def rdp_epsilon(rounds: int, z: float, delta: float) -> float:
    """The Gaussian mechanism's RDP, alpha / (2 z^2) per release (Mironov 2017, Prop. 7), composed
    additively and converted with Balle et al. 2020's bound (Opacus's conversion), over Opacus's orders."""
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)
    rdp = rounds * orders / (2 * z ** 2)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


@pytest.mark.parametrize("rounds,z", [(1, 1.0), (20, 1.0), (20, 5.0), (100, 0.8)])
def test_epsilon_equals_the_rdp_formula_for_the_released_rounds(rounds, z):
    assert privacy.epsilon_after(rounds, z, 1e-5) == pytest.approx(rdp_epsilon(rounds, z, 1e-5), rel=1e-9)
    assert privacy.epsilon_after(0, z, 1e-5) == 0.0
    assert privacy.epsilon_after(3, 0.0, 1e-5) == float("inf")


def test_the_server_half_counts_released_rounds_only(monkeypatch):
    identity(monkeypatch)
    cfg = compose([*DP, "privacy.noise_multiplier=1.0"])
    _, server = aggregate(cfg, [0.0], [[0.1]] * 4, sizes=[1] * 4)
    server.incoming([])  # a round in which no site answered releases nothing
    row = server.after_round(2, server.sent)["privacy"]
    assert row["update_norm"] == 0 and row["rounds_released"] == 1 and row["epsilon"] == pytest.approx(rdp_epsilon(1, 1.0, 1e-5))
    assert server.summary()["privacy"]["dp"] == "central"


def test_the_client_mod_clips_a_site_update_with_flowers_mod_and_leaves_other_messages(monkeypatch):
    identity(monkeypatch)
    sent = ArrayRecord({"w": Array(np.array([1.0, 1.0], np.float32))})

    def app(msg, context):  # a site that moved its weights by (3, 4)
        w = msg.content["arrays"]["w"].numpy() + np.array([3.0, 4.0], np.float32)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    msg = Message(RecordDict({"arrays": sent, "config": ConfigRecord({KEY_CLIPPING_NORM: 2.0})}),
                  dst_node_id=1, message_type="train")
    out = privacy.client_mod(msg, context, app)
    assert out.content["arrays"]["w"].numpy().tolist() == pytest.approx([1 + 1.2, 1 + 1.6])  # (3,4) * 2/5
    plain = Message(RecordDict({"arrays": sent, "config": ConfigRecord({"x": 1})}), dst_node_id=1,
                    message_type="train")
    assert privacy.client_mod(plain, context, app).content["arrays"]["w"].numpy().tolist() == [4.0, 5.0]


@pytest.mark.parametrize("overrides,fix", [
    (["privacy.dp=central", "strategy=scaffold"], "use strategy=fedavg, fedprox or moon"),
    (["privacy.dp=central", "strategy=fedadam"], "use strategy=fedavg, fedprox or moon"),
    (["privacy.dp=client_clipping", "compression.kind=int8"], "set compression.kind=none"),
    (["privacy.dp=central", "scenario=continual_classes"], "continual.kind=none"),
    (["privacy.dp=client_clipping", "backend.executor=cohort"], "set backend.executor=clientapp"),
    (["privacy.dp=dpsgd", "model=simple_cnn_bn"], "model.norm=group"),
    (["privacy.dp=dpsgd", "strategy=scaffold"], "a strategy without a client half"),
    (["privacy.dp=dpsgd", "model=vit_tiny"], "model=vit_tiny"),
    (["privacy.secagg=true", "num_clients=2"], "at least 3 sites"),
    (["privacy.secagg=true", "strategy=scaffold"], "use fedavg, fedprox"),
    (["privacy.secagg=true", "privacy.dp=central"], "privacy.dp=dpsgd"),
    (["privacy.secagg=true", "backend.executor=cohort"], "set backend.executor=clientapp"),
    (["privacy.secagg=true", "privacy.secagg_quantization_range=1000000000"], "overflows"),
    (["privacy.secagg=true", "faults.straggler_prob=0.2"], "set faults.straggler_prob=0"),
    (["privacy.secagg=true", "scenario=continual_classes"], "continual.kind=none"),
    (["privacy.dp=central", "privacy.clipping=adaptive", "privacy.noise_multiplier=1.0"], "below 1 with 10 sites"),
    (["privacy.noise_multiplier=-1"], ">= 0"),
    (["privacy.target_epsilon=0"], "> 0"),
    (["privacy.target_epsilon=-2"], "> 0"),
    (["privacy.clipping_norm=0"], "> 0"),
])
def test_impossible_privacy_settings_name_the_fix(overrides, fix):
    with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(".", r"\.")):
        compose(overrides)


SMALL = ["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "model=mlp", "local_epochs=1",
         "rounds=3", "save_model=false", "tracking.tensorboard=false", "checkpoint_every=0"]


def test_a_central_dp_federation_records_epsilon_per_round_and_noise_costs_accuracy(tmp_path, monkeypatch):
    from test_compression import federate

    identity(monkeypatch)
    rows = federate(tmp_path, "privacy.dp=central", "privacy.noise_multiplier=1.0", "privacy.clipping_norm=0.5",
                    "rounds=3")
    eps = [r["privacy"]["epsilon"] for r in rows]
    assert eps == pytest.approx([rdp_epsilon(k, 1.0, 1e-5) for k in (1, 2, 3)])
    loud = federate(tmp_path, "privacy.dp=central", "privacy.noise_multiplier=50.0", "rounds=3")
    quiet = federate(tmp_path, "privacy.dp=central", "privacy.noise_multiplier=0.0", "privacy.clipping_norm=100",
                     "rounds=3")
    plain = federate(tmp_path, "rounds=3")
    assert quiet[-1]["privacy"]["epsilon"] is None  # no noise, no guarantee (JSON has no infinity)
    assert loud[-1]["loss"] > quiet[-1]["loss"]
    assert all(np.isfinite(r["loss"]) for r in plain + quiet)


@pytest.mark.e2e
def test_sites_clip_their_own_updates_with_flowers_mod_in_a_ray_simulation(cli, tmp_path):
    """client_clipping, no noise, C = 0.01: the global model moves by the mean of clipped updates,
    at most C, although the sites' unclipped mean update is over ten times longer."""
    import json

    small = ["scenario=dirichlet_0.5", "num_clients=3", "rounds=2", "local_epochs=1", "save_model=false",
             "checkpoint_every=0", "tracking.tensorboard=false", "privacy.noise_multiplier=0"]
    moved = {}
    for dp, norm in (("client_clipping", 0.01), ("central", 1000.0)):
        out = tmp_path / dp
        result = cli(*small, f"output_dir={out}", f"privacy.dp={dp}", f"privacy.clipping_norm={norm}")
        assert result.returncode == 0, result.stderr[-3000:]
        (run_dir,) = out.iterdir()
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        moved[dp] = [r["privacy"]["update_norm"] for r in rows]
        assert json.loads((run_dir / "summary.json").read_text())["privacy"]["dp"] == dp
    assert max(moved["client_clipping"]) <= 0.01 + 1e-6
    assert moved["central"][0] > 0.1  # the same sites' mean update unclipped (at 1000): over 10 C


def test_adaptive_clipping_runs_and_the_console_shows_epsilon(tmp_path, monkeypatch):
    from fedcls.engine.runner import headline
    from fedcls.outputs.results import console_line
    from test_compression import federate

    identity(monkeypatch)
    rows = federate(tmp_path, "privacy.dp=central", "privacy.clipping=adaptive", "privacy.noise_multiplier=0.1",
                    "num_clients=3", "rounds=2")
    assert [r["privacy"]["epsilon"] for r in rows] == pytest.approx([rdp_epsilon(k, 0.1, 1e-5) for k in (1, 2)])
    assert f"eps {rows[-1]['privacy']['epsilon']:.3g}" in console_line(rows[-1], 2)
    assert "central DP (epsilon 16.5, delta 1e-05)" in headline({"privacy": {"dp": "central", "epsilon": 16.5,
                                                                             "delta": 1e-5}})
