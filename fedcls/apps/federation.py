"""The server's round loop: a Flower strategy driven over a Grid, with global evaluation and a
per-round recorder.

Written by hand instead of calling ``Strategy.start``: start() offers no per-round callback
besides centralized evaluation, no start round (needed to resume), and samples nodes by random
node ids. The loop below makes the same strategy calls in the same order as start().
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

import strategies
from fedcls.algorithms import privacy, secagg
from fedcls.algorithms.models import build_model
from fedcls.algorithms.training import evaluate
from fedcls.apps import faults
from fedcls.apps.client_app import EXAMPLES_KEY, SITE_KEY
from fedcls.apps.features import extensions_for
from fedcls.apps.payload import CONFIG_KEY, Payload
from fedcls.apps.screening import ReplyScreen, Screened
from fedcls.apps.traffic import Traffic
from fedcls.data.federated import FederatedData
from fedcls.data.site_folders import federation_info
from fedcls.data.sources import Dataset
from fedcls.errors import ConfigError, short_reason
from fedcls.outputs import checkpoint
from fedcls.outputs.results import Recorder
from fedcls.schema import Config

QUERY_TIMEOUT_S = 600.0
PER_CLIENT = ("site", "participations", "experience",  # train metrics that make no sense averaged
              "dp-epsilon", "dp-noise-multiplier", "dp-steps")  # DP-SGD's per site: the row's `privacy` has them
COUNTS = ("num-steps",)  # train metrics that count: the round's total (an integer), not a weighted mean
NODE_SAMPLING = random.Random()  # Flower's node sampling draws from this generator alone (sample_nodes_privately)


def sample_nodes_privately(seed: str) -> None:
    """Seed Flower's node sampling with `seed`, on a generator no other code draws from.

    Flower's strategies sample with the module-level ``random`` (strategy_utils.sample_nodes), and
    other threads of the driver draw from it too: Ray's ``init`` runs in the simulation's main
    thread while round 1 already runs in the ServerApp's, and changed which sites evaluated in
    round 1 from run to run. Written by hand: Flower takes no generator for its sampling."""
    from flwr.serverapp.strategy import strategy_utils

    strategy_utils.random = NODE_SAMPLING  # the module's `random.sample` now means ours
    NODE_SAMPLING.seed(seed)


def aggregate_with_spread(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower's weighted mean of client metrics, plus the unweighted mean/min/max accuracy.
    Sites without a local test split (data.local_test_fraction=0) measured nothing and are left
    out; if none measured anything there is no local accuracy (an empty record)."""
    records = [r for r in records if float(next(iter(r.metric_records.values()))[weight_key]) > 0]
    if not records:
        return MetricRecord()
    agg = aggregate_metricrecords(records, weight_key)
    agg.pop("site", None)  # per-site; read by fedcls.algorithms.domain_eval, meaningless averaged
    accs = [float(next(iter(r.metric_records.values()))["accuracy"]) for r in records]
    agg["accuracy_mean"], agg["accuracy_min"], agg["accuracy_max"] = (
        sum(accs) / len(accs), min(accs), max(accs))
    return agg


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower's weighted mean of client train metrics, except COUNTS: their sum over the sites, so
    "num-steps" is the round's local steps as an integer (a mean of counts was 68.02499999999999)."""
    agg = aggregate_metricrecords(records, weight_key)
    for key in COUNTS:
        values = [next(iter(r.metric_records.values())).get(key) for r in records]
        if key in agg and None not in values:
            agg[key] = int(sum(round(float(v)) for v in values))
    return agg


def build_strategy(cfg: Config) -> Strategy:
    """The configured strategy with fedcls's sampling and metric settings."""
    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": 1,  # discover_sites waits for every node; some may sit out a round
        "evaluate_metrics_aggr_fn": aggregate_with_spread,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    strategy = strategies.get(cfg.strategy.name).build_server(dict(cfg.strategy.params), common, cfg)
    return privacy.wrap_strategy(strategy, cfg) if privacy.central(cfg) else strategy


class SiteOrderedGrid:
    """A Grid whose node ids and replies come in site order, so that seeded sampling (Flower
    samples over ``get_node_ids()``: sample_nodes_privately) and the order of aggregation --
    hence every float -- are the same in every run, whatever node ids the run drew."""

    def __init__(self, grid: Grid, site_of_node: dict[int, int], on_replies: Callable[[int], None] | None = None):
        """`on_replies(n)`: told how many sites have answered so far (the console's live line)."""
        self._grid, self.on_replies = grid, on_replies
        self.site_of_node = site_of_node
        self.traffic = Traffic()  # bytes to and from the sites (fedcls.apps.traffic)
        self._nodes = sorted(site_of_node, key=site_of_node.__getitem__)
        self.active_sites: set[int] | None = None  # None: every site may be sampled

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return [n for n in self._nodes
                if self.active_sites is None or self.site_of_node[n] in self.active_sites]

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None):
        messages = list(messages)
        if hasattr(self._grid, "push_messages"):
            replies = push_and_pull(self._grid, messages, timeout, self.on_replies)
        else:  # a grid of our own (the cohort executor)
            replies = self._grid.send_and_receive(messages, timeout=timeout)
        self.traffic.count(messages, replies)
        return sorted(replies, key=lambda m: self.site_of_node.get(m.metadata.src_node_id, -1))


PULL_INTERVAL_S = 0.1


def push_and_pull(grid: Grid, messages: Iterable[Message], timeout: float | None,
                  on_replies: Callable[[int], None] | None = None) -> list[Message]:
    """Grid.send_and_receive with a short pull interval: Flower 1.42's deployment grid sleeps
    3 s between pulls, a few seconds lost per round; a simulation's pulls run as soon as a reply is
    stored (fedcls.engine.flower_patches.wake_on_messages). `on_replies` hears how many have
    answered."""
    stored = replies_stored(grid)
    pending = set(grid.push_messages(messages))
    deadline = time.time() + timeout if timeout is not None else None
    replies: list[Message] = []
    while pending and (deadline is None or time.time() < deadline):
        stored.clear()  # before the pull: a reply stored during it ends the wait below at once
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if on_replies is not None:
            on_replies(len(replies))
        if pending:
            stored.wait(PULL_INTERVAL_S)
    return replies


def replies_stored(grid: Grid) -> threading.Event:
    """Set when a simulation's link state stores a reply; a deployment's grid has none to watch:
    an event nobody sets, so waiting on it is a sleep."""
    state = getattr(grid, "state", None)
    return arrived(state, "replies") if getattr(state, "_fedcls_wakes", False) else threading.Event()


def arrived(state, kind: str) -> threading.Event:
    """The event a simulation's link state sets when it stores a message of `kind` ("instructions"
    or "replies"; fedcls.engine.flower_patches.wake_on_messages)."""
    return state.__dict__.setdefault("_fedcls_arrived", {}).setdefault(kind, threading.Event())


def wait_for_nodes(grid: Grid, expected: int) -> list[int]:
    while len(nodes := list(grid.get_node_ids())) < expected:
        time.sleep(0.2)
    return nodes


def discover_sites(grid: Grid, expected: int, payload: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """The roll call: ask every node which site it serves and, when the config `payload` goes
    with the question, how many training samples it holds: ({node id: site id}, {site id: samples})."""
    nodes = wait_for_nodes(grid, expected)
    config = {CONFIG_KEY: payload} if payload else None
    messages = [Message(RecordDict({"config": ConfigRecord(config)} if config else {}), dst_node_id=n,
                        message_type="query") for n in nodes]
    replies = grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_S)
    if failed := [m for m in replies if m.has_error()]:  # not a roster problem: the nodes did not answer
        raise RuntimeError(f"{len(failed)} of {len(nodes)} nodes failed to say which site they serve "
                           f"(first: {short_reason(str(failed[0].error.reason))[:300]})")
    site_of_node = {m.metadata.src_node_id: int(m.content["site"][SITE_KEY]) for m in replies}
    declared = {int(m.content["site"][SITE_KEY]): int(m.content["site"][EXAMPLES_KEY]) for m in replies
                if EXAMPLES_KEY in m.content["site"]}
    return site_of_node, declared


def known_sites(grid) -> dict[int, int] | None:
    """{node id: site} when the grid knows it without asking the nodes, else None: the cohort
    executor's grid, and Flower's simulation grid with fedcls.engine.flower_patches.serve_many_nodes
    (a simulated node serves the site of its partition-id). Ask once its nodes are all there."""
    roster = getattr(grid, "simulated_sites", None)
    known = roster() if callable(roster) else None
    return dict(known) if known is not None else None


def roster(grid: Grid, cfg: Config, federation: dict, recorder: Recorder) -> tuple[dict[int, int], dict | None]:
    """({node id: site}, {site: training samples it declared}) by the roll call, or, when the grid
    knows its sites (a simulation), ({node id: site}, None) without one: at 10,000 sites the roll
    call alone is 10,000 messages before round 1, and the server bounds each site's claimed
    examples by its own partition of the data, the numbers the sites would declare."""
    wait_for_nodes(grid, cfg.num_clients)
    if (known := known_sites(grid)) is not None:
        recorder.progress.phase("sites", f"{len(known)} simulated sites, each node's site known "
                                         "(no roll call: round 1 begins)")
        return known, None
    recorder.progress.stage(0, "roll call", cfg.num_clients)
    site_of_node, declared = discover_sites(grid, cfg.num_clients, Payload(cfg, federation).to_json())
    recorder.progress.phase("sites", f"{len(site_of_node)} of {cfg.num_clients} answered the roll call "
                                     "(their actors or SuperNodes are up)")
    return site_of_node, declared


def site_local_keys(cfg: Config, ds: Dataset) -> set[str]:
    """Weights the strategy keeps at the sites (FedBN's BatchNorm): a reply may leave them out."""
    hooks = strategies.get(cfg.strategy.name).evaluation_hooks()
    if not hooks:
        return set()
    with torch.random.fork_rng(devices=[]):  # a throwaway model: the server's RNG stream stays as it was
        model = build_model(cfg.model, ds.shape, ds.num_classes)
    return set().union(*(h.local_keys(model) for h in hooks))


def global_evaluator(cfg: Config, ds: Dataset):
    """(initial weights, evaluate(arrays) -> (loss, accuracy) on the global test set)."""
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    torch.manual_seed(cfg.seed)  # the initial global weights depend on the seed alone
    model = build_model(cfg.model, ds.shape, ds.num_classes).to(device)
    test_x, test_y = ds.normalize(ds.test_x).to(device), ds.test_y.to(device)

    def evaluate_global(arrays: ArrayRecord) -> tuple[float, float]:
        # strict=False: strategies such as FedBN keep some weights at the sites; the global
        # model then evaluates with those layers as initialised
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        return evaluate(model, test_x, test_y)

    return ArrayRecord(model.state_dict()), evaluate_global


def _failures(replies: list[Message]) -> list[str]:
    """Short reasons of failed replies (Flower's carry a whole Ray traceback, the cohort
    worker's its own: fedcls.errors.failure_reason)."""
    reasons = []
    for m in (m for m in replies if m.has_error()):
        reason = short_reason(str(m.error.reason))
        short = reason.rsplit("Message: ", 1)[-1] if "Message: " in reason else reason.splitlines()[-1]
        reasons.append(short.strip().rstrip("'>").strip())
    return reasons


def _failure_details(replies: list[Message], site_of_node: dict[int, int], phase: str) -> list[tuple]:
    """(site, phase, whole reason) of each failed reply, for the run folder's client_errors.txt."""
    return [(site_of_node.get(m.metadata.src_node_id, -1), phase, str(m.error.reason))
            for m in replies if m.has_error()]


def _site_metrics(replies: list[Message]) -> dict[str, dict]:
    """{site: its accuracy, loss and test examples} of the evaluation replies that measured something
    (the per-site view behind the round's mean/min/max: plots weigh small sites by their size)."""
    sites = {}
    for m in (m for m in replies if not m.has_error()):
        metrics = next(iter(m.content.metric_records.values()))
        if int(metrics["num-examples"]) > 0:
            sites[int(metrics["site"])] = {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"]),
                                           "examples": int(metrics["num-examples"])}
    return {str(site): sites[site] for site in sorted(sites)}


def _trained_sites(replies: list[Message]) -> list[list[int]]:
    """[site, times it has trained so far] for each client that trained this round."""
    out = []
    for m in (m for m in replies if not m.has_error()):
        metrics = next(iter(m.content.metric_records.values()))
        out.append([int(metrics["site"]), int(metrics["participations"])])
    return out


def check_roster(site_of_node: dict[int, int], num_clients: int) -> None:
    """Every site 0..num_clients-1 served by exactly one node, or a clear error."""
    sites = sorted(site_of_node.values())
    if twice := sorted(s for s, count in Counter(sites).items() if count > 1):  # (list.count: N^2 at 10,000 sites)
        raise ConfigError(
            f"site(s) {twice[:12]} are each served by more than one node: give every SuperNode its own site "
            f"(its node config's data-dir with its own site.json, or site-id=<k>); num_clients={num_clients} "
            f"needs sites 0..{num_clients - 1}, one node each")
    if sites != list(range(num_clients)):
        raise ConfigError(
            f"the federation's {len(sites)} nodes serve sites {sites[:12]}{'...' if len(sites) > 12 else ''}"
            f", but num_clients={num_clients} needs sites 0..{num_clients - 1}: set num_clients="
            f"{len(sites)} or give the federation {num_clients} nodes (num-supernodes)")


def run_federation(grid: Grid, cfg: Config, data: FederatedData, recorder: Recorder, resume: dict | None = None,
                   client_state_dir: Path | None = None) -> ArrayRecord:
    """Run cfg.rounds rounds of the configured strategy over `grid`; returns the weights.
    `resume`: a checkpoint (fedcls.outputs.checkpoint) to continue from; `client_state_dir`: where
    simulated clients keep their state for checkpoints (None: no checkpoints of client state)."""
    federation = federation_info(data.dataset)
    site_of_node, declared = roster(grid, cfg, federation, recorder)
    check_roster(site_of_node, cfg.num_clients)
    grid = SiteOrderedGrid(grid, site_of_node, recorder.progress.replies)
    arrays, evaluate_global = global_evaluator(cfg, data.dataset)
    recorder.start(data)
    strategy, extensions, first = build_strategy(cfg), extensions_for(cfg, data), 1
    screen = ReplyScreen(cfg, data, arrays, site_local_keys(cfg, data.dataset), declared)
    if resume is not None:
        checkpoint.restore_into(resume, strategy, extensions)
        first, arrays = resume["round"] + 1, ArrayRecord(resume["arrays"])
        recorder.resume_from(resume["rows"], resume["extras"])
        checkpoint.restore_rng(resume)
    for rnd in range(first, cfg.rounds + 1):
        saved = ({"dir": str(client_state_dir), "upto": _last_checkpoint(cfg, rnd)}
                 if client_state_dir is not None else None)  # clients write their state; a resume reads it up to here
        payload = Payload(cfg, federation, saved).to_json()
        # the first round a process runs also starts every actor and builds its data and model: no
        # deadline for the real replies then (injected stragglers still miss theirs: FaultDelivery)
        timeout = (cfg.faults.round_timeout or None) if rnd > first else None
        arrays = _round(grid, cfg, rnd, arrays, strategy, extensions, screen, payload, recorder, evaluate_global,
                        timeout)
        if _checkpoint_due(cfg, rnd):
            checkpoint.save(recorder.run_dir, rnd, arrays.to_torch_state_dict(), strategy, extensions,
                            recorder.rows, recorder.extras)
            recorder.interim()  # now with the command to resume
    return arrays


def _checkpoint_due(cfg: Config, rnd: int) -> bool:
    every = cfg.checkpoint_every
    return every > 0 and (rnd % every == 0 or rnd == cfg.rounds)


def _last_checkpoint(cfg: Config, rnd: int) -> int:
    """The last round checkpointed before round `rnd` runs (0: none)."""
    return max((r for r in range(1, rnd) if _checkpoint_due(cfg, r)), default=0)


def _round(grid: SiteOrderedGrid, cfg: Config, rnd: int, arrays: ArrayRecord, strategy, extensions,
           screen: ReplyScreen, payload: str, recorder: Recorder, evaluate_global,
           timeout: float | None) -> ArrayRecord:
    """One round: train (with injected faults screened), aggregate, evaluate, record."""
    started, started_at = time.perf_counter(), time.time()
    sample_nodes_privately(f"{cfg.seed}-{rnd}")
    for ext in extensions:
        ext.before_train(rnd, arrays, grid, ConfigRecord({CONFIG_KEY: payload}))
    grid.active_sites = _train_sites(extensions, rnd)
    # a fresh ConfigRecord per call: strategies write their own entries into it (FedProx's mu)
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({CONFIG_KEY: payload}), grid))
    grid.active_sites = None  # every site may evaluate
    for ext in extensions:
        messages = ext.outgoing(messages)
    dropped = []
    for ext in extensions:
        messages, withheld = ext.withhold(rnd, messages, grid.site_of_node)
        dropped += withheld
    train_started = time.perf_counter()
    recorder.progress.stage(rnd, "training", len(messages))
    secure = None
    if cfg.privacy.secagg:  # Flower's SecAgg+ (fedcls.algorithms.secagg): the server sees only the sites'
        # weighted mean (one reply per site carrying it), so no site's weights can be screened
        secure = secagg.train(grid, rnd, messages, arrays, strategy, cfg.privacy, screen.max_examples, timeout)
        replies = secure.replies
    else:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        for ext in extensions:
            replies = ext.arrived(rnd, replies, grid.site_of_node, train_started)
    train_seconds = time.perf_counter() - train_started
    screened = (Screened(replies, secure.failed) if secure is not None
                else screen.screen(messages, replies, grid.site_of_node, arrays))
    replies, failed = screened.usable, {"dropped": sorted(dropped), **screened.failed}
    recorder.client_errors(rnd, _failure_details(replies, grid.site_of_node, "train")
                           + [(site, "train", f"rejected: {why}") for site, why in screened.rejected])
    if secure is not None and secure.halted:
        raise faults.TooFewReplies(f"round {rnd}: {secure.halted}; the run stops here and resumes from its "
                                   f"last checkpoint with resume=<run folder>.")
    for ext in extensions:
        replies = ext.incoming(replies)
    usable = sum(not m.has_error() for m in replies)
    if usable < cfg.faults.min_train_nodes:
        raise faults.TooFewReplies(
            f"round {rnd}: {usable} usable training replies, fewer than faults.min_train_nodes="
            f"{cfg.faults.min_train_nodes} (failed sites: {failed}); the run stops here and "
            f"resumes from its last checkpoint with resume=<run folder>."
            + faults.divergence_hint(cfg, usable, failed))
    if _examples(replies) > 0:
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        arrays = new_arrays if new_arrays is not None else arrays
    else:  # every client that answered held no data this round (continual): nothing to average
        train_metrics = None
    config = ConfigRecord({CONFIG_KEY: payload})
    eval_messages = list(strategy.configure_evaluate(rnd, arrays, config, grid))
    for ext in extensions:
        eval_messages = ext.outgoing_evaluate(rnd, arrays, eval_messages)
    recorder.progress.stage(rnd, "evaluating at the sites", len(eval_messages))
    eval_replies = list(grid.send_and_receive(eval_messages))
    client_metrics = strategy.aggregate_evaluate(rnd, eval_replies)
    recorder.progress.stage(rnd, "testing the global model")
    loss, accuracy = evaluate_global(arrays)
    extra = {k: v for ext in extensions for k, v in
             {**ext.after_evaluate(rnd, eval_replies), **ext.after_round(rnd, arrays)}.items()}
    recorder.extras = {k: v for ext in extensions for k, v in ext.summary().items()}
    recorder.client_errors(rnd, _failure_details(eval_replies, grid.site_of_node, "evaluate"))
    recorder.round(rnd, {
        "accuracy": accuracy, "loss": loss,
        "train": {k: v for k, v in dict(train_metrics or {}).items() if k not in PER_CLIENT},
        "clients": dict(client_metrics or {}), "sites": _site_metrics(eval_replies),
        "sampled": len(messages) + len(dropped), "trained": _trained_sites(replies),
        "failures": (_failures(replies) + [f"site {site} rejected: {why}" for site, why in screened.rejected]
                     + _failures(eval_replies)),
        "faults": failed, "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
        "started_at": started_at, "bytes": grid.traffic.take(), **extra,
    })
    return arrays


def _examples(replies: list[Message]) -> float:
    """Training examples behind the usable replies (the weights FedAvg and its kin divide by)."""
    return sum(float(next(iter(m.content.metric_records.values())).get("num-examples", 0))
               for m in replies if not m.has_error())


def _train_sites(extensions: list, rnd: int) -> set[int] | None:
    """Sites every extension lets train in round `rnd` (None: all)."""
    sets = [s for ext in extensions if (s := ext.train_sites(rnd)) is not None]
    return set.intersection(*sets) if sets else None
