"""The Flower ClientApp: translates Messages to and from the one local training loop.

The same app runs in simulation (a Ray actor per client slot) and at a real site (a SuperNode).
The resolved fedcls config arrives with every message (fedcls.apps.payload), so a site needs no
copy of the server's config; data and model come from the per-actor cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import strategies
from fedcls.algorithms import privacy, secagg
from fedcls.algorithms.feature import ClientHalf, SiteRound
from fedcls.algorithms.training import TrainParams, evaluate, local_update
from fedcls.apps import client_state
from fedcls.apps.features import client_halves
from fedcls.apps.payload import CONFIG_KEY, Payload, read_payload
from fedcls.apps.runtime import get_runtime
from fedcls.apps.torch_settings import apply_torch_settings
from fedcls.data import site_folders
from fedcls.schema import Config

SITE_KEY, EXAMPLES_KEY = "site-id", "train-examples"  # a node's answer to the server's roll call

app = ClientApp(mods=[secagg.client_mod, privacy.client_mod])  # Flower's mods: SecAgg+, DP clipping at the site


def site_id(context: Context) -> int:
    """This node's site: node config ``site-id``, else the site.json of its ``data-dir``, else
    the simulation's ``partition-id``."""
    node = context.node_config
    if "site-id" in node:
        return int(node["site-id"])
    if "data-dir" in node:
        return site_folders.folder_site_id(str(node["data-dir"]))
    if "partition-id" not in node:
        raise ValueError("the SuperNode's node config names no site: start it with --node-config "
                         "'data-dir=\"<site folder>\"' (or partition-id=<k> to share the scenario's dataset)")
    return int(node["partition-id"])


def round_seed(cfg: Config, server_round: int, site: int) -> int:
    """Seed of one client's local work in one round, derived from (seed, round, site)."""
    return int(np.random.SeedSequence([cfg.seed, server_round, site]).generate_state(1)[0])


def _setup(msg: Message, context: Context) -> tuple[Payload, ConfigRecord, object]:
    config = msg.content["config"]
    payload = read_payload(str(config[CONFIG_KEY]))
    cfg = payload.cfg
    apply_torch_settings(cfg.backend.num_cpus, cfg.backend.tf32)  # once per process
    return payload, config, get_runtime(cfg, site_folder=_folder(context), federation=payload.federation)


def _folder(context: Context) -> tuple[str, int] | None:
    """(data-dir, site) of a deployed site that names its own data folder, else None."""
    folder = context.node_config.get("data-dir")
    return (str(folder), site_id(context)) if folder else None


def _inbox(msg: Message) -> dict:
    """The message's named tensors besides the weights (SCAFFOLD's c, EWC's importances)."""
    return {key: rec.to_torch_state_dict() for key, rec in msg.content.array_records.items()
            if key != "arrays"}


def _strategy_hooks(cfg: Config, msg: Message, inbox: dict) -> list:
    return strategies.get(cfg.strategy.name).client_hooks(msg.content["config"], inbox)


def _evaluation_hooks(cfg: Config) -> list:
    return strategies.get(cfg.strategy.name).evaluation_hooks()


def _site_round(halves: list[ClientHalf], runtime, site: int, server_round: int) -> SiteRound:
    """A site's data in a round: a feature's (continual learning: the current experience), else
    its share of the dataset."""
    for half in halves:
        if (found := half.site_round(runtime, site, server_round)) is not None:
            return found
    return SiteRound(runtime.site(site))


def _load_weights(model, arrays: ArrayRecord, hooks: list) -> set[str]:
    """Load the global weights; only keys that hooks keep at the site may be absent.
    Returns those site-local keys."""
    local_keys = set().union(*(h.local_keys(model) for h in hooks))
    missing, unexpected = model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    if unexpected or set(missing) - local_keys:
        raise ValueError(f"global weights do not fit the model: missing "
                         f"{sorted(set(missing) - local_keys)[:5]}, unexpected {unexpected[:5]}")
    return local_keys


@dataclass
class TrainJob:
    """One client's training in a round, prepared from its message: what the loop needs, and
    what its reply needs. The ClientApp runs one; the cohort executor (fedcls.apps.cohort) many."""

    msg: Message
    context: Context
    cfg: Config
    checkpointed: dict | None  # where a simulation that checkpoints keeps client state (fedcls.apps.payload)
    round: int
    site: int
    model: torch.nn.Module  # the runtime's model, holding the global weights
    site_round: SiteRound  # the site's data this round (a continual site: its experience)
    params: TrainParams
    hooks: list
    state: dict
    local_keys: set[str]
    participations: int
    features: list[ClientHalf]  # the enabled features' client halves (fedcls.apps.features)
    feature_state: dict = field(default_factory=dict)  # state the halves keep from this round on (compression's residuals)

    @property
    def data(self):
        return self.site_round.data


def prepare_train(msg: Message, context: Context) -> TrainJob:
    """Load the global weights into the runtime's model and build the client's hooks and state:
    the features' first hooks, the strategy's, the features' last ones."""
    payload, config, runtime = _setup(msg, context)
    cfg, site, rnd = payload.cfg, site_id(context), int(config["server-round"])
    seed = round_seed(cfg, rnd, site)
    torch.manual_seed(seed)
    params = TrainParams(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum,
                         cfg.weight_decay, seed)
    inbox, halves = _inbox(msg), client_halves(cfg)
    hooks = _strategy_hooks(cfg, msg, inbox)
    local_keys = _load_weights(runtime.model, msg.content["arrays"], hooks)
    for half in halves:
        half.before_train(rnd, site)  # an injected crash raises here
    state = client_state.load(context, site, payload.client_state)  # a new process: its disk or checkpoint
    rounds = int(state.pop("fedcls", {}).get("participations", torch.tensor(0))) + 1
    job = TrainJob(msg, context, cfg, payload.client_state, rnd, site, runtime.model, _site_round(halves, runtime, site, rnd), params,
                   hooks, state, local_keys, rounds, halves)
    job.hooks = ([h for half in halves for h in half.hooks_first(job, inbox)] + hooks
                 + [h for half in halves for h in half.hooks_last(job, inbox)])
    return job


def train_reply(job: TrainJob, result, weights: dict) -> Message:
    """Save the client's new state and answer with its weights, metrics and named tensors."""
    metrics = {**result.metrics, "participations": float(job.participations), "site": float(job.site),
               "num-examples": result.examples}
    weights = {k: v for k, v in weights.items() if k not in job.local_keys}
    for half in job.features:  # fault injection: poisoned or malicious; compression: what travels
        weights, metrics = half.outgoing(job, weights, metrics)  # (their state: job.feature_state)
    state = {**result.state, **job.feature_state, "fedcls": {"participations": torch.tensor(job.participations)}}
    client_state.save(job.context, job.site, state, job.checkpointed, job.round)
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics),
                          **{name: ArrayRecord(t) for name, t in result.outbox.items()}})
    return Message(content=content, reply_to=job.msg)


def run_job(job: TrainJob) -> Message:
    """Train one prepared client in the one loop and answer (the model holds the global weights);
    a feature may train it its own way (a CORAL target site never uses its labels)."""
    update = next((u for half in job.features if (u := half.local_update(job)) is not None), local_update)
    result = update(job.model, job.data, job.params, job.hooks, job.state)
    return train_reply(job, result, job.model.state_dict())


@app.train()
def train(msg: Message, context: Context) -> Message:
    return run_job(prepare_train(msg, context))


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    payload, config, runtime = _setup(msg, context)
    cfg, site, inbox = payload.cfg, site_id(context), _inbox(msg)
    halves = client_halves(cfg)
    hooks = _evaluation_hooks(cfg) + [h for half in halves for h in half.evaluation_hooks(inbox)]
    _load_weights(runtime.model, msg.content["arrays"], hooks)
    site_round = _site_round(halves, runtime, site, int(config.get("server-round", 1)))
    data = site_round.data
    state = client_state.load(context, site, payload.client_state)
    for hook in hooks:  # e.g. FedBN puts the site's own BatchNorm back
        hook.before_evaluate(runtime.model, state, data.train_x)
    test_x, test_y = site_round.test_split()
    loss, acc = evaluate(runtime.model, test_x, test_y, noise_scale=data.noise_scale,
                         seed=round_seed(cfg, 0, site))
    metrics = MetricRecord({"loss": loss, "accuracy": acc, "num-examples": len(test_y),
                            "site": float(site)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which site this node serves and how many training samples it holds (the
    roll call of fedcls.apps.federation.discover_sites), or answer a feature's query (CORAL's
    feature statistics) under the weights sent, the model prepared as for evaluation (FedBN: the
    site's own BatchNorm)."""
    roll_call = {SITE_KEY: site_id(context)}
    if "config" in msg.content.config_records and CONFIG_KEY in msg.content["config"]:
        payload, _, runtime = _setup(msg, context)
        cfg = payload.cfg
        if half := next((h for h in client_halves(cfg) if h.answers(msg)), None):
            _load_weights(runtime.model, msg.content["arrays"], _strategy_hooks(cfg, msg, {}))
            x = runtime.site(site_id(context)).train_x
            state = client_state.load(context, site_id(context), payload.client_state)
            for hook in _evaluation_hooks(cfg):
                hook.before_evaluate(runtime.model, state, x)
            return Message(content=half.answer(runtime.model, x), reply_to=msg)
        roll_call[EXAMPLES_KEY] = len(runtime.data.sites[site_id(context)].train_idx)  # no tensors built yet
    return Message(content=RecordDict({"site": ConfigRecord(roll_call)}), reply_to=msg)
