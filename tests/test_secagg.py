"""Secure aggregation over Flower's SecAgg+ (fedcls.algorithms.secagg): the bridge's unmasked mean
equals FedAvg's example-weighted mean within the quantisation SecAgg+ uses, a site that drops
mid-protocol is tolerated, too many dropouts halt the round without a model, and fedcls's
Message-API strategies take the mean as if it were the sites' own replies.

The in-process tests drive the real server stages and the real ``secaggplus_mod`` at each node over
a small in-memory grid (every message through Flower's wire format, each node its own Context
whose state persists across the four stages); the e2e tests run a Ray simulation and a real
SuperLink/SuperNode federation (tests/test_deployment_e2e.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto

from fedcls.algorithms import secagg
from fedcls.schema import PrivacyConfig
from strategy_helpers import identity

SHAPES = {"conv.weight": (4, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,), "bn.num_batches_tracked": ()}


class MemoryGrid:
    """Nodes 1..n, each a ClientApp with SecAgg+'s mod and its own persistent Context; messages go
    through Flower's protobuf form both ways. `fail[node] = stage`: the node answers that stage with
    an error (its app never runs again this round); `silent[node] = stage`: it never answers."""

    def __init__(self, sites: dict[int, tuple[dict[str, np.ndarray], int]], crash_in_train: set[int] = frozenset()):
        self.sites, self.crash_in_train = sites, set(crash_in_train)
        self.fail: dict[int, str] = {}
        self.silent: dict[int, str] = {}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                         for n in sites}
        self.app = ClientApp(mods=[secagg.client_mod])
        self.app.train()(self._train)
        self.stages: list[str] = []

    def _train(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        if node in self.crash_in_train:
            raise RuntimeError(f"injected crash at node {node}")
        weights, n = self.sites[node]
        assert msg.content["config"]["server-round"] == 3 and "arrays" in msg.content.array_records
        metrics = MetricRecord({"num-examples": n, "train_loss": 0.1 * node, "site": float(node - 1)})
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                                   "metrics": metrics}), reply_to=msg)

    def get_node_ids(self) -> list[int]:
        return sorted(self.sites)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            msg = message_from_proto(message_to_proto(msg))  # the wire: no object shared between nodes
            node = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE] if RECORD_KEY_CONFIGS in msg.content else None
            self.stages.append(stage)
            if self.silent.get(node) == stage:
                continue
            if self.fail.get(node) == stage:
                reply = Message(Error(code=0, reason=f"node {node} failed at {stage}"), reply_to=msg)
            else:
                try:
                    reply = self.app(msg, self.contexts[node])
                except Exception as err:  # noqa: BLE001 - as Flower's runtime answers an exception
                    reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            replies.append(message_from_proto(message_to_proto(reply)))
        return replies


def make_sites(seed: int = 0, counts=(120, 75, 300, 42, 190), scale: float = 0.5):
    rng = np.random.default_rng(seed)
    sites = {}
    for node, n in enumerate(counts, start=1):
        weights = {k: (rng.normal(0, scale, s).astype(np.float32) if "num_batches" not in k
                       else np.asarray(10 * node, dtype=np.int64)) for k, s in SHAPES.items()}
        sites[node] = (weights, n)
    return sites


def global_arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(np.zeros(s, dtype=np.float32) if "num_batches" not in k else np.asarray(0))
                        for k, s in SHAPES.items()})


def train_messages(grid: MemoryGrid, arrays: ArrayRecord, rnd: int = 3) -> list[Message]:
    from flwr.serverapp.strategy import FedAvg

    return list(FedAvg(min_available_nodes=1, min_train_nodes=1).configure_train(rnd, arrays, ConfigRecord({"payload": "x"}), grid))


def weighted_mean(sites: dict, nodes) -> dict[str, np.ndarray]:
    total = sum(sites[n][1] for n in nodes)
    return {k: sum(sites[n][1] * sites[n][0][k].astype(np.float64) for n in nodes) / total for k in sites[nodes[0]][0]}


def bound(sites: dict, nodes, privacy: PrivacyConfig, max_weight: float, mean: dict) -> float:
    """The most any value may differ from the example-weighted mean (fedcls.algorithms.secagg):
    k sites' stochastic rounding, one step 2C/Q each, plus the weights' rounding to 1/Q (each moves
    the mean by at most 1/(2Q) times the spread), divided by the sum of the quantised weights;
    plus the float32 the result is stored in."""
    c, q, k = privacy.secagg_clipping_range, privacy.secagg_quantization_range, len(nodes)
    dq = sum(round(sites[n][1] / max_weight * q) / q for n in nodes)
    floats = [key for key in mean if sites[nodes[0]][0][key].dtype.kind == "f"]  # integer buffers: not summed
    spread = max(float(np.abs(sites[n][0][key] - mean[key]).max()) for n in nodes for key in floats)
    biggest = max(float(np.abs(mean[key]).max()) for key in floats)
    return (k * 2 * c / q + k / (2 * q) * 2 * spread) / dq + biggest * 2.0**-23


def run_round(grid: MemoryGrid, privacy: PrivacyConfig, max_weight: float) -> secagg.SecureRound:
    arrays = global_arrays()
    flow = secagg.workflow(privacy, max_weight, timeout=None)
    return secagg.secure_train(grid, 3, train_messages(grid, arrays), arrays, flow, {n: n - 1 for n in grid.sites})


def check_mean(result: secagg.SecureRound, sites: dict, nodes, privacy, max_weight) -> float:
    assert result.halted is None and result.arrays is not None
    mean = weighted_mean(sites, nodes)
    limit = bound(sites, nodes, privacy, max_weight, mean)
    worst = 0.0
    for key, array in result.arrays.items():
        got = array.numpy()
        assert got.shape == SHAPES[key] and got.dtype == global_arrays()[key].numpy().dtype
        if got.dtype.kind == "f":
            worst = max(worst, float(np.abs(got - mean[key]).max()))
        else:  # an integer buffer (a step counter): not summed, the global model's kept
            assert int(got) == 0
    assert worst <= limit, (worst, limit)
    return worst


def test_the_unmasked_mean_is_fedavgs_within_the_quantisation(monkeypatch):
    identity(monkeypatch)
    sites = make_sites()
    grid = MemoryGrid(sites)
    privacy, max_weight = PrivacyConfig(secagg=True), sum(n for _, n in sites.values())
    result = run_round(grid, privacy, max_weight)
    worst = check_mean(result, sites, list(sites), privacy, max_weight)
    assert worst > 0  # really quantised (and within the bound, ~2e-5 here: check_mean)
    assert set(grid.stages) == set(Stage.all()) and len(grid.stages) == 4 * len(sites)
    assert result.dropped == {} and result.failed["secagg_dropped"] == [] and result.failed["crashed"] == []
    # one reply per site for the strategy: the mean, with the site's own (plaintext) metrics
    assert sorted(float(m.content["metrics"]["site"]) for m in result.replies) == [0, 1, 2, 3, 4]
    assert all(m.content["arrays"] is result.arrays for m in result.replies)
    assert {int(m.content["metrics"]["num-examples"]) for m in result.replies} == {n for _, n in sites.values()}


def test_a_coarse_quantisation_stays_within_its_bound(monkeypatch):
    """With 2^10 levels the error is large enough to see the bound is the right one, not loose."""
    identity(monkeypatch)
    sites = make_sites(seed=1)
    privacy, max_weight = PrivacyConfig(secagg=True, secagg_quantization_range=2**10, secagg_clipping_range=4.0), 1000
    worst = check_mean(run_round(MemoryGrid(sites), privacy, max_weight), sites, list(sites), privacy, max_weight)
    assert worst > 1e-3


def test_a_site_that_drops_mid_protocol_is_left_out(monkeypatch):
    """Node 3 crashes in its training (inside the collect-masked-vectors stage, where fedcls's
    injected crash happens): the others' shares of its key remove its masks, and the aggregate is
    the weighted mean of the other four."""
    identity(monkeypatch)
    sites = make_sites(seed=2)
    grid = MemoryGrid(sites, crash_in_train={3})
    privacy, max_weight = PrivacyConfig(secagg=True), sum(n for _, n in sites.values())
    result = run_round(grid, privacy, max_weight)
    check_mean(result, sites, [1, 2, 4, 5], privacy, max_weight)
    assert result.dropped == {2: Stage.COLLECT_MASKED_VECTORS}
    assert result.failed["secagg_dropped"] == [2] and result.failed["crashed"] == [2]
    errors = [m for m in result.replies if m.has_error()]
    assert len(errors) == 1 and "injected crash at node 3" in errors[0].error.reason
    assert sorted(float(m.content["metrics"]["site"]) for m in result.replies if not m.has_error()) == [0, 1, 3, 4]


@pytest.mark.parametrize("stage", [Stage.SETUP, Stage.SHARE_KEYS, Stage.UNMASK])
def test_dropouts_at_the_other_stages(monkeypatch, stage):
    """A site silent from the setup or share-keys stage on (before its key shares exist: left out,
    which Flower 1.42 gets wrong without the bridge's fix) or failing only at the unmask stage (its
    masked vector is in the sum: its own mask comes from the others' shares)."""
    identity(monkeypatch)
    sites = make_sites(seed=3)
    grid = MemoryGrid(sites)
    grid.silent[2] = stage
    privacy, max_weight = PrivacyConfig(secagg=True), sum(n for _, n in sites.values())
    result = run_round(grid, privacy, max_weight)
    contributors = list(sites) if stage == Stage.UNMASK else [1, 3, 4, 5]
    check_mean(result, sites, contributors, privacy, max_weight)
    assert result.dropped == {1: stage} and result.failed["late"] == [1]


def test_without_the_fix_an_early_dropout_loses_flowers_round(monkeypatch):
    """The evidence for ``_forget_early_dropouts``: Flower's stages alone, a site silent at the
    share-keys stage, and the unmask stage fails at every remaining site."""
    identity(monkeypatch)
    monkeypatch.setattr(secagg, "_forget_early_dropouts", lambda state: None)
    sites = make_sites(seed=3)
    grid = MemoryGrid(sites)
    grid.silent[2] = Stage.SHARE_KEYS
    result = run_round(grid, PrivacyConfig(secagg=True), sum(n for _, n in sites.values()))
    assert result.arrays is None and result.halted and "unmask" in result.halted
    assert sorted(result.dropped.values()) == [Stage.SHARE_KEYS] + [Stage.UNMASK] * 4
    assert all("KeyError" in m.error.reason for m in result.replies)


def test_too_many_dropouts_halt_the_round_without_a_model(monkeypatch):
    """Five sites share with all five at threshold 0.6 (3 shares needed; at 0.5 Flower's round(2.5)
    needs 2): three crashes leave two, below it. The round halts and says why; no arrays come out."""
    identity(monkeypatch)
    sites = make_sites(seed=4)
    grid = MemoryGrid(sites, crash_in_train={1, 2, 5})
    result = run_round(grid, PrivacyConfig(secagg=True, secagg_threshold=0.6), sum(n for _, n in sites.values()))
    assert result.arrays is None and not any(not m.has_error() for m in result.replies)
    assert "halted at its collect_masked_vectors stage: 2 of 5 sampled sites" in result.halted
    assert "reconstruction threshold (3 of 5 key shares" in result.halted
    assert result.failed["secagg_dropped"] == [0, 1, 4]
    assert Stage.UNMASK not in grid.stages


def test_one_sampled_site_is_refused(monkeypatch):
    identity(monkeypatch)
    sites = make_sites(counts=(100,))
    result = run_round(MemoryGrid(sites), PrivacyConfig(secagg=True), 100)
    assert result.arrays is None and "at least 2 sampled sites" in result.halted


@pytest.mark.parametrize("weights, why", [
    ({"fc.bias": np.full(5, np.nan, dtype=np.float32)}, "not finite"),
    ({"fc.bias": np.full(5, 1000.0, dtype=np.float32)}, "beyond privacy.secagg_clipping_range=8"),
])
def test_a_site_whose_weights_cannot_be_summed_faithfully_drops_out(monkeypatch, weights, why):
    """A NaN would wrap to garbage in the integer sum and a value past the clipping range would be
    cut silently: the site drops out instead (nobody could see it in the sum)."""
    identity(monkeypatch)
    sites = make_sites(seed=5)
    sites[4] = ({**sites[4][0], **weights}, sites[4][1])
    privacy, max_weight = PrivacyConfig(secagg=True), sum(n for _, n in sites.values())
    result = run_round(MemoryGrid(sites), privacy, max_weight)
    check_mean(result, sites, [1, 2, 3, 5], privacy, max_weight)
    [error] = [m for m in result.replies if m.has_error()]
    assert why in error.error.reason and result.dropped == {3: Stage.COLLECT_MASKED_VECTORS}


def test_a_weight_above_max_weight_drops_the_site(monkeypatch):
    identity(monkeypatch)
    sites = make_sites(seed=6, counts=(100, 100, 5000, 100))
    privacy = PrivacyConfig(secagg=True)
    result = run_round(MemoryGrid(sites), privacy, 400)
    check_mean(result, sites, [1, 2, 4], privacy, 400)
    assert "above the max_weight 400" in next(m for m in result.replies if m.has_error()).error.reason


@pytest.mark.parametrize("name", ["FedAvg", "FedProx", "FedAvgM", "FedAdam"])
def test_the_strategies_take_the_mean_as_the_sites_replies(monkeypatch, name):
    """Handing a Message-API strategy the exact mean as one reply per site (each with its own
    metrics) gives what the sites' own replies give: FedAvg's and FedProx's mean, FedAvgM's and
    FedAdam's server step from it, the same train metrics. And with the bridge's secure mean the
    strategy's result stays within the quantisation bound (FedAvg, FedProx, FedAvgM)."""
    import flwr.serverapp.strategy as flower

    identity(monkeypatch)
    sites, arrays = make_sites(seed=7), global_arrays()
    arrays = ArrayRecord({k: a for k, a in arrays.items() if "num_batches" not in k})  # float weights only
    floats = {n: ({k: v for k, v in w.items() if "num_batches" not in k}, c) for n, (w, c) in sites.items()}
    grid = MemoryGrid(floats)
    plain_replies = [Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in w.items()}),
                                         "metrics": MetricRecord({"num-examples": c, "train_loss": 0.1 * n})}),
                             dst_node_id=n, message_type="train") for n, (w, c) in floats.items()]
    exact = {k: v.astype(np.float32) for k, v in weighted_mean(floats, list(floats)).items() if k in arrays}
    mean_replies = [Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in exact.items()}),
                                        "metrics": r.content["metrics"]}), dst_node_id=0, message_type="train")
                    for r in plain_replies]

    def aggregate(replies):
        strategy = getattr(flower, name)()
        list(strategy.configure_train(3, arrays, ConfigRecord(), grid))  # FedAvgM/FedAdam keep the global arrays
        return strategy.aggregate_train(3, replies)

    (a, am), (b, bm) = aggregate(plain_replies), aggregate(mean_replies)
    for key in arrays:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-5, atol=1e-6)
    assert dict(bm) == pytest.approx(dict(am))
    if name != "FedAdam":  # Adam's first step divides by |update|: it need not keep an absolute bound
        privacy, max_weight = PrivacyConfig(secagg=True), sum(n for _, n in floats.values())
        flow = secagg.workflow(privacy, max_weight, timeout=None)
        secure = secagg.secure_train(grid, 3, train_messages(grid, arrays), arrays, flow)
        c, _ = aggregate(secure.replies)
        limit = bound(floats, list(floats), privacy, max_weight, weighted_mean(floats, list(floats)))
        for key in arrays:
            assert float(np.abs(c[key].numpy() - a[key].numpy()).max()) <= limit + 1e-6


def test_other_messages_pass_the_mod_untouched(monkeypatch):
    identity(monkeypatch)
    seen = []

    def call_next(msg, context):
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    for kind in ("train", "evaluate", "query"):
        msg = Message(RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=1, message_type=kind)
        secagg.client_mod(msg, context, call_next)
    assert len(seen) == 3 and not context.state.config_records  # no SecAgg+ state began


# ------------------------------------------------------------------------------ end to end


def _crash_seed(rounds: int, sites: int, crash_round: int, prob: float) -> int:
    """A seed under which faults.crash_prob crashes exactly one site, in round `crash_round` only."""
    from fedcls.apps.faults import fault_of
    from fedcls.config import compose

    for seed in range(1000):
        cfg = compose([f"seed={seed}", f"faults.crash_prob={prob}", f"num_clients={sites}"])
        crashed = [[s for s in range(sites) if fault_of(cfg, r, s) == "crash"] for r in range(1, rounds + 1)]
        if all(len(c) == (1 if r == crash_round else 0) for r, c in enumerate(crashed, start=1)):
            return seed
    raise AssertionError("no seed found")


@pytest.mark.e2e
def test_secagg_simulation_tolerates_a_site_crashing_mid_protocol(cli, tmp_path):
    """A Ray simulation of 3 sites with SecAgg+: round 2 loses one site inside the protocol (its
    injected crash happens in its training, the collect-masked-vectors stage); the run completes
    with the other two's mean, and the metrics name the site."""
    from fedcls.apps.faults import fault_of
    from fedcls.config import compose

    seed = _crash_seed(2, 3, 2, 0.3)
    args = ["num_clients=3", "rounds=2", "local_epochs=1", "lr=0.05", "model=mlp", "fraction_evaluate=0",
            "save_model=false", "privacy.secagg=true", "faults.crash_prob=0.3", f"seed={seed}"]
    result = cli(*args, f"output_dir={tmp_path}", "run_id=run")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cfg = compose(args)
    [crashed] = [s for s in range(3) if fault_of(cfg, 2, s) == "crash"]
    assert len(rows) == 2 and all(np.isfinite(r["accuracy"]) for r in rows) and rows[-1]["accuracy"] > 0.3
    assert rows[0]["faults"]["secagg_dropped"] == [] and sorted(s for s, _ in rows[0]["trained"]) == [0, 1, 2]
    assert rows[1]["faults"]["secagg_dropped"] == [crashed] and rows[1]["faults"]["crashed"] == [crashed]
    assert sorted(s for s, _ in rows[1]["trained"]) == sorted({0, 1, 2} - {crashed})
    assert any("injected crash" in f for f in rows[1]["failures"])
    # the protocol's four exchanges cost more than one: more bytes from the sites than the weights alone
    assert rows[0]["bytes"]["from_sites"] > 0
