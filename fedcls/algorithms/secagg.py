"""Secure aggregation with Flower's SecAgg+ (Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020) for fedcls's Message-API strategies (``privacy.secagg``).

Every site masks its (example-weighted, quantised) weights with pairwise masks and a private mask;
the server sums the masked vectors and learns only the sum, from which it removes the masks with
secret shares the sites send it. A site that drops mid-round (after sharing its keys) is tolerated:
the others' shares of its key rebuild the masks it would have cancelled, as long as every site keeps
``privacy.secagg_threshold`` of its shares among the sites still answering; otherwise the round halts
with no model (``SecureRound.halted``), never a wrong one.

What is Flower's (1.42, unchanged): the whole protocol. The server runs ``SecAggPlusWorkflow``'s
four stage methods (setup, share keys, collect masked vectors, unmask: key agreement, Shamir
shares, masking, quantisation, unmasking, dequantisation) over fedcls's grid; each site runs
``secaggplus_mod``.

What is written by hand, and why: Flower 1.42 has SecAgg+ only as a *legacy* workflow. Its server
stages take a ``LegacyContext`` whose ``strategy`` is a legacy ``flwr.server.strategy.Strategy``
(``configure_fit`` returning (ClientProxy, FitIns) pairs, ``aggregate_fit`` receiving the unmasked
mean as FitRes), and its client mod reads the app's reply with ``recorddict_to_fitres`` (the legacy
records "fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status"), whereas
fedcls's strategies are Message-API ones (``configure_train``/``aggregate_train`` on Messages) and its
ClientApp answers ``{"arrays": ArrayRecord, "metrics": MetricRecord}``. The bridge is:

- server (``secure_train``): a stand-in legacy strategy whose ``configure_fit`` returns the nodes
  fedcls's strategy sampled and whose ``aggregate_fit`` captures the unmasked mean; after the setup
  stage each node's FitIns is replaced by the content of fedcls's own train message (the ClientApp
  then gets its usual "arrays" and "config" plus Flower's "secaggplus_configs"). The mean, with the
  global arrays' keys, shapes and dtypes, is handed back to fedcls's strategy as one reply per site
  that contributed (``SecureRound.replies``: the mean with that site's own plaintext metrics), so
  ``strategy.aggregate_train`` -- FedAvg's weighted mean of identical arrays is the mean itself, up
  to float32 rounding -- and the server optimisers after it (FedAvgM, FedAdam, ...) run as ever.
  Only strategies whose aggregation is the example-weighted mean qualify
  (``strategies.capabilities(name).weighted_mean``); the weight is the strategy's ``weighted_by_key``
  metric, which Flower's mod turns into its integer weight.
- client (``client_mod``): Flower's ``secaggplus_mod`` on the training messages that carry its
  configs, with the app's Message-API reply turned into the legacy records the mod reads (the site's
  MetricRecord travels on beside them, in the clear as Flower's FitRes metrics do). Before its
  weights are masked a site checks them: a non-finite value, a weight above ``max_weight``, or a
  value the clipping range would cut makes the site drop out (the others go on, its masks are
  removed) instead of corrupting a sum nobody can inspect. Only floating-point arrays are summed:
  integer buffers (BatchNorm's num_batches_tracked, a step counter) stay as the global model has
  them (``summed_keys``).
- a fix of one Flower 1.42 defect (``_forget_early_dropouts``): a site that drops before it has
  sent its key shares (stage setup or share keys) stays among the sampled ones, so the unmask stage
  asks the other sites for shares of its key that they never received (every site fails on a
  KeyError and the round is lost) or removes pairwise masks that were never added. The protocol
  leaves such a site out altogether: no share of it exists and no mask involves it.

Precision (derived from Flower's ``quantize``/``dequantize`` and the mod's weighting): site i with
weight n_i sends ``clip(dq_i * p_i)`` quantised to steps of 2C/Q (C: ``secagg_clipping_range``, Q:
``secagg_quantization_range``) with stochastic rounding (error < one step), where
``dq_i = round(n_i Q / W) / Q`` and W is ``max_weight``; the server divides the sum by ``sum dq_i``.
So the result is the dq-weighted mean of the p_i plus at most ``k * (2C/Q) / sum dq_i`` from
rounding, and the dq weights differ from n_i/W by at most 1/(2Q) each, which moves the mean by at
most ``k/(2Q) * 2 max|p_i - mean| / sum dq_i``. Here W is the training samples the sampled sites
declared at the roll call (``max_examples``), so ``sum dq_i`` is about 1 and, for 10 sites at the
defaults (C=8, Q=2^22), the aggregate is within about 4e-5 of FedAvg's (typically ~1e-5).

Not under SecAgg+: fedcls's reply screening (fedcls.apps.screening) needs each site's weights,
which the server never sees; nor anything else that reads or rewrites one site's weights on the
server (compression's decoding, stragglers' simulated delay, central DP's server-side clipping).
Reproducibility: the masks, keys and the stochastic rounding are random, so two runs of the same
config agree only within the quantisation error above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState

WEIGHTED_BY = "secagg-weighted-by"  # train config entry: the metric the site's weight comes from
DEFAULT_WEIGHT = "num-examples"
MODULUS_RANGE = 2**32  # Flower's default (and maximum) mask modulus


# ----------------------------------------------------------------------------------- server


@dataclass
class SecureRound:
    """One round's training under SecAgg+."""

    arrays: ArrayRecord | None  # the unmasked weighted mean (None: the protocol halted, or no weight)
    replies: list[Message]  # per contributing site: the mean + its own metrics; and every error reply
    failed: dict[str, list[int]]  # late, crashed, non_finite, rejected (as the screening's), secagg_dropped
    dropped: dict[int, str] = field(default_factory=dict)  # site -> the stage at which it left
    halted: str | None = None  # why no model came out of the round


@dataclass
class _Node:
    """What the workflow needs of a ClientProxy: the node id."""

    node_id: int


class _Bridge:
    """The legacy strategy and client manager the workflow talks to: ``configure_fit`` names the
    nodes fedcls's strategy sampled, ``aggregate_fit`` captures the unmasked mean."""

    def __init__(self, node_ids: list[int]):
        self.node_ids, self.results = node_ids, None

    def num_available(self) -> int:  # the client manager's one call (a log line)
        return len(self.node_ids)

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Node(n), FitIns(Parameters([], ""), {})) for n in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        self.results = results
        return None, {}


class _StageGrid:
    """The round's grid, remembering what each stage sent and what came back."""

    def __init__(self, grid):
        self.grid, self.stage = grid, ""
        self.sent: dict[str, list[int]] = {}
        self.replies: dict[str, list[Message]] = {}

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.sent[self.stage] = [m.metadata.dst_node_id for m in messages]
        self.replies[self.stage] = replies
        return replies


def workflow(privacy, max_weight: float, timeout: float | None) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow as ``privacy`` (fedcls.schema.PrivacyConfig) configures it."""
    return SecAggPlusWorkflow(float(privacy.secagg_shares), float(privacy.secagg_threshold),
                              max_weight=float(max_weight), clipping_range=float(privacy.secagg_clipping_range),
                              quantization_range=int(privacy.secagg_quantization_range),
                              modulus_range=MODULUS_RANGE, timeout=timeout)


def train(grid, rnd: int, messages: list[Message], arrays: ArrayRecord, strategy, privacy,
          max_examples: dict[int, int], timeout: float | None) -> SecureRound:
    """fedcls's round loop's call (fedcls.apps.federation): round `rnd`'s train `messages` through
    SecAgg+ over `grid` (a SiteOrderedGrid: its traffic counts every stage), max_weight the training
    samples the sampled sites declared (`max_examples`, the bound the screening holds them to)."""
    site_of_node = grid.site_of_node
    max_weight = sum(max_examples.get(site_of_node.get(m.metadata.dst_node_id, -1), 0) for m in messages)
    flow = workflow(privacy, max(max_weight, 1), timeout)
    return secure_train(grid, rnd, messages, arrays, flow, site_of_node,
                        getattr(strategy, "weighted_by_key", DEFAULT_WEIGHT))


def secure_train(grid, rnd: int, messages: list[Message], like: ArrayRecord, flow: SecAggPlusWorkflow,
                 site_of_node: dict[int, int] | None = None, weighted_by: str = DEFAULT_WEIGHT) -> SecureRound:
    """Run round `rnd`'s training through Flower's four SecAgg+ stages over `grid`.

    `messages`: the train messages fedcls's strategy made (``configure_train``, after the extensions);
    `like`: the global arrays (the mean gets their keys, shapes and dtypes); `flow`: the workflow
    (``workflow``, its max_weight at least any site's weight); `weighted_by`: the strategy's weight
    metric. Sites are named by `site_of_node` (node ids where it has none)."""
    site_of_node = site_of_node or {}

    def site(nid: int) -> int:
        return site_of_node.get(nid, nid)

    requests = {m.metadata.dst_node_id: m for m in messages}
    bridge, stages = _Bridge(list(requests)), _StageGrid(grid)
    server = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    server.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    server.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # configure_fit above needs no weights
    context = LegacyContext(server, strategy=bridge, client_manager=bridge)
    state = WorkflowState()
    halted = None
    for name, stage in zip(Stage.all(), (flow.setup_stage, flow.share_keys_stage,
                                         flow.collect_masked_vectors_stage, flow.unmask_stage)):
        stages.stage = name
        if not stage(stages, context, state):
            halted = name
            break
        if name == Stage.SETUP:  # fedcls's own message content, with Flower's configs added at stage 2
            state.nid_to_fitins = {nid: _content(requests[nid], weighted_by) for nid in state.nid_to_fitins}
        elif name == Stage.SHARE_KEYS:
            _forget_early_dropouts(state)

    dropped, errors, late = _dropouts(stages)
    collected = [m for m in stages.replies.get(Stage.COLLECT_MASKED_VECTORS, []) if not m.has_error()]
    failed = {"late": sorted(site(n) for n in late), "crashed": sorted(site(m.metadata.src_node_id) for m in errors),
              "non_finite": [], "rejected": [], "secagg_dropped": sorted(site(n) for n in dropped)}
    by_site = {site(n): stage for n, stage in dropped.items()}
    if halted is not None:
        why = (f"SecAgg+ halted at its {halted} stage: {len(state.active_node_ids)} of {len(requests)} sampled sites still "
               f"answering, fewer than its reconstruction threshold ({state.threshold} of {state.num_shares} "
               f"key shares: privacy.secagg_threshold of privacy.secagg_shares), so the masks cannot be removed "
               f"and the round gives no model (sites that dropped out: {sorted(by_site.items())})")
        if len(requests) < 2:
            why = f"SecAgg+ needs at least 2 sampled sites, this round sampled {len(requests)}"
        return SecureRound(None, errors, failed, by_site, why)

    total = sum(float(m.content["fitres.num_examples"]["num_examples"]) for m in collected)
    mean = None
    if bridge.results and total > 0:
        mean = _as_like(parameters_to_ndarrays(bridge.results[0][1].parameters), like)
    replies = [Message(RecordDict({"arrays": mean if mean is not None else like,
                                   "metrics": MetricRecord(dict(m.content["metrics"]))}),
                       reply_to=requests[m.metadata.src_node_id]) for m in collected]
    return SecureRound(mean, replies + errors, failed, by_site)


def _content(request: Message, weighted_by: str) -> RecordDict:
    """The node's own copy of its train message's content (Flower's stage 2 adds its configs to it;
    fedcls's strategies share one RecordDict between all their messages), naming the weight metric."""
    content = RecordDict(dict(request.content.items()))
    config = request.content.config_records.get("config", ConfigRecord())
    content["config"] = ConfigRecord({**dict(config), WEIGHTED_BY: weighted_by})
    return content


def _forget_early_dropouts(state: WorkflowState) -> None:
    """Leave out the sites that dropped before sharing their keys (see the module docstring)."""
    survivors = set(state.active_node_ids)
    state.sampled_node_ids = survivors
    for nid in survivors:
        state.nid_to_neighbours[nid] &= survivors


def _dropouts(stages: _StageGrid) -> tuple[dict[int, str], list[Message], list[int]]:
    """({node: the stage it left at}, its error replies, nodes that never answered)."""
    dropped: dict[int, str] = {}
    errors, late = [], []
    for stage in Stage.all():
        if stage not in stages.sent:
            break
        answered = {m.metadata.src_node_id for m in stages.replies[stage]}
        for m in stages.replies[stage]:
            if m.has_error() and m.metadata.src_node_id not in dropped:
                dropped[m.metadata.src_node_id] = stage
                errors.append(m)
        for nid in stages.sent[stage]:
            if nid not in answered and nid not in dropped:
                dropped[nid] = stage
                late.append(nid)
    return dropped, errors, late


def summed_keys(arrays: ArrayRecord) -> list[str]:
    """The arrays SecAgg+ sums, in the order they travel: the floating-point ones. Integer buffers
    (BatchNorm's num_batches_tracked) are counters, not learned weights, and would not survive the
    clipping range: they stay as the global model has them (FedAvg would average them)."""
    return [k for k, a in arrays.items() if np.dtype(a.dtype).kind == "f"]


def _as_like(ndarrays: list[np.ndarray], like: ArrayRecord) -> ArrayRecord:
    """The unmasked arrays (float64, ``summed_keys(like)`` in order) as `like`'s arrays: its keys,
    shapes and dtypes, its integer buffers kept."""
    keys = summed_keys(like)
    if len(ndarrays) != len(keys):
        raise ValueError(f"SecAgg+ returned {len(ndarrays)} arrays, the model has {len(keys)} to sum")
    summed = dict(zip(keys, ndarrays))
    out = {}
    for key, ref in like.items():
        want = ref.numpy()
        out[key] = Array(np.asarray(summed[key], dtype=want.dtype).reshape(want.shape)) if key in summed else ref
    return ArrayRecord(out)


# ----------------------------------------------------------------------------------- client


def client_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` on the training messages that carry its configs (a SecAgg+ round),
    with the app's reply turned into the legacy records the mod reads; every other message passes."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, lambda m, c: legacy_reply(call_next(m, c), m, c))
    return call_next(msg, context)


def legacy_reply(reply: Message, request: Message, context: Context) -> Message:
    """The app's Message-API reply {"arrays", "metrics"} as the legacy FitRes records Flower's mod
    reads: the float weights in the order of the global arrays sent (``summed_keys``), the weight metric as num_examples,
    the MetricRecord kept as it is (plaintext, like FitRes metrics)."""
    if reply.has_error():
        raise RuntimeError(f"the site's training failed: {reply.error.reason}")
    content = reply.content
    if extra := sorted(set(content.array_records) - {"arrays"}):
        raise ValueError(f"SecAgg+ sums one ArrayRecord, 'arrays'; this reply also carries {extra}: "
                         "the strategy or feature needs more than the example-weighted mean of the weights")
    arrays, metrics = content["arrays"], content["metrics"]
    order = summed_keys(request.content["arrays"])
    if set(arrays.keys()) != set(request.content["arrays"].keys()):
        raise ValueError(f"SecAgg+ sums the whole model: the reply's arrays differ from the global ones "
                         f"(missing {sorted(set(request.content['arrays'].keys()) - set(arrays.keys()))[:3]}, "
                         f"extra {sorted(set(arrays.keys()) - set(request.content['arrays'].keys()))[:3]})")
    key = str(request.content["config"].get(WEIGHTED_BY, DEFAULT_WEIGHT))
    ndarrays = [arrays[k].numpy() for k in order]
    weight = _check(ndarrays, metrics.get(key), key, SecAggPlusState(**context.state.config_records[RECORD_KEY_STATE]))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(ndarrays), weight, {})
    legacy = compat.fitres_to_recorddict(fitres, keep_input=False)
    legacy["metrics"] = MetricRecord(dict(metrics))
    return Message(legacy, reply_to=request)


def _check(ndarrays: list[np.ndarray], weight: Any, key: str, state: SecAggPlusState) -> int:
    """The site's integer weight, if its weights can be summed faithfully; else it drops out."""
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0 or weight != int(weight):
        raise ValueError(f"SecAgg+: the weight metric '{key}' is {weight!r}, not a whole number >= 0")
    if weight > state.max_weight:
        raise ValueError(f"SecAgg+: this site's weight {weight:g} ('{key}') is above the max_weight "
                         f"{state.max_weight:g} the server set, and would overflow the secure sum")
    scale = round(weight / state.max_weight * state.target_range) / state.target_range
    for arr in ndarrays:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("SecAgg+: this site's weights are not finite; it drops out of the secure sum")
        if arr.size and float(np.abs(arr).max()) * scale > state.clipping_range:
            raise ValueError(f"SecAgg+: a weight of {float(np.abs(arr).max()):.4g} times this site's share "
                             f"{scale:.3g} is beyond privacy.secagg_clipping_range={state.clipping_range:g}: "
                             "raise it, or the sum would be silently clipped")
    return int(weight)
