"""The config schema: one dataclass per section, the ONE source of every key's default, type, valid
choices, range and help text. ``fedcls.config`` composes a run's config on it (defaults, then a
scenario file, then command-line overrides) and ``Config.from_dict`` types and checks it; ``--help``
prints it (``schema_text``); the code reads it typed (``cfg.partition.alpha``).

Names that live in registries of higher layers (datasets, models, partition kinds, input
normalisations) and checks across keys stay in ``fedcls.checks``; a strategy's own parameters are
declared in its file (``strategies.Param``) and kept in ``cfg.strategy.params``.
Hand-written: dataclasses and Hydra's structured configs type a config, but neither gives fedcls's
messages (the key, the valid range, a hint naming the fix) nor keeps ``coral.lambda`` (a Python
keyword) as the key users type.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from fedcls.errors import ConfigError, unknown_name


def opt(default: Any, help: str, *, choices: tuple = (), ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, hint: str = "", key: str | None = None):
    """A config key: its default, help text, valid choices or range (`hint` follows the range in the
    message) and, where it is not the field's name, the key users type."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "hint": hint, "key": key}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = opt("simple_cnn", "mlp | simple_cnn | simple_cnn_bn | resnet18 | vit_tiny")
    norm: str = opt("batch", "resnet18 only: batch | group (GroupNorm, 2 groups per 32 channels)")


@dataclass
class StrategyConfig:
    """The strategy's name and its parameters (declared, typed and checked in strategies/<name>.py)."""

    name: str = opt("fedavg", "strategies/<name>.py; its parameters are strategy.<param> (see Strategies)")
    params: dict = field(default_factory=dict)


@dataclass
class PartitionConfig:
    kind: str = opt("iid", "iid | dirichlet | label_k | shards | quantity | noise (NIID-Bench's) | natural (the "
                    "sites a dataset's id column names) | flwr:<Partitioner> (Flower Datasets', e.g. "
                    "flwr:DirichletPartitioner)")
    alpha: float = opt(0.5, "dirichlet and quantity: concentration; smaller = more skewed", gt=0)
    k: int = opt(2, "label_k: labels per site (#C=k)", ge=1)
    shards_per_client: int = opt(2, "shards: label-sorted shards per site (McMahan et al. 2017)", ge=1)
    sigma: float = opt(0.1, "noise: site i gets Gaussian feature noise of std sigma*i/(n-1)", ge=0)
    min_size: int = opt(10, "dirichlet and quantity: redraw until every site has this many samples", ge=1)
    id_column: str | None = opt(None, "natural: the column naming each sample's site (writer, hospital, device)")
    args: dict = opt({}, "flwr:<Partitioner>: its arguments, e.g. partition.args.alpha=0.3 (num_partitions, "
                     "partition_by=label and seed default to num_clients, the class and the run's seed)")


@dataclass
class SyntheticConfig:
    num_samples: int = opt(4000, "samples in the pool", ge=1)
    num_classes: int = opt(10, "classes", ge=1)
    channels: int = opt(1, "image channels", ge=1)
    image_size: int = opt(28, "image side in pixels", ge=1)


@dataclass
class HFConfig:
    image_column: str = opt("image", "the column holding the images (an Image feature, or pixel arrays)")
    label_column: str = opt("label", "the column holding each image's class (ClassLabel, integers or strings)")
    train_split: str = opt("train", "the split the sites share")
    test_split: str | None = opt("test", "the server's test split; null, or a dataset without one: "
                                 "data.test_fraction of train_split is held out")
    subset: str | None = opt(None, "the dataset's configuration (load_dataset's name argument)")


@dataclass
class DataConfig:
    root: str = opt("~/.fedcls/data", "torchvision datasets live (or are downloaded) here")
    download: bool = opt(True, "try to download torchvision datasets that are missing")
    test_fraction: float = opt(0.2, "embedded datasets: share held out as the global test set", gt=0, lt=1)
    local_test_fraction: float = opt(
        0.2, "share of each site's data kept as its local test split (0: all of it trains, as in "
        "NIID-Bench; no local accuracy then)", ge=0, lt=1, hint="0: all of a site's data trains")
    normalize: str = opt("standardize", "model inputs: standardize (per channel, the train pool's mean 0 / "
                         "std 1) | none (plain pixels / 255 in [0, 1], as NIID-Bench's MNIST and CIFAR-10)")
    split_seed: int = opt(0, "the global train/test split, fixed across seeds", ge=0)
    digits_framing: str = opt("full", "dataset digits: full (8x8 upsampled to the whole 28x28 frame) | mnist "
                              "(resized to 20x20 and padded to 28x28, as MNIST frames its digits)",
                              choices=("full", "mnist"))
    image_folder: str | None = opt(None, "dataset=imagefolder: folder with train/<class>/<image> "
                                   "(+ test/<class>/...)")
    image_size: int = opt(0, "imagefolder and hf: resize images to this size (0: the first image's); "
                          "medmnist: which of its files, 28 | 64 | 128 | 224 (0: 28)", ge=0,
                          le=1024, hint="pixels a side; 0: the first image's")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig,
                                       metadata={"help": "dataset=synthetic: Gaussian class clusters"})
    hf: HFConfig = field(default_factory=HFConfig, metadata={
        "help": "dataset=hf:<Hugging Face name or local folder>: columns and splits"})


@dataclass
class DomainConfig:
    sites: list = opt([], "device domain per site (site i gets sites[i % len]); '+' chains, e.g. "
                      "[identity, contrast:0.5, blur:1.0, gamma:2.0, noise:0.3+contrast:0.7]")
    targets: list = opt([], "target sites: never train (labels only for evaluation); target_accuracy")
    target_dataset: str | None = opt(None, "e.g. digits: the target sites hold this dataset instead of a share")


@dataclass
class CoralConfig:
    enabled: bool = opt(False, "Deep CORAL between sites (Sun & Saenko 2016): shares feature covariances")
    lambda_: float = opt(1.0, "weight of the CORAL loss at the training sites", ge=0, key="lambda")
    mode: str = opt("target", "target (sources align to the targets' statistics, targets to the sources') | "
                    "pooled (every training site to every site's)", choices=("target", "pooled"))
    loss: str = opt("paper", "paper (Sun & Saenko's ||C_S-C_T||^2 / 4d^2; measured best) | cosine "
                    "(1 - cos(C_S, C_T): the covariances' shapes, so shrinking cannot meet it)",
                    choices=("paper", "cosine"))
    train_targets: bool = opt(True, "the target sites train too, on the CORAL loss alone (never their labels)")
    target_update: str = opt("added", "added (the targets' CORAL update adds to the sources' mean, as Deep "
                             "CORAL sums both sides' gradients) | averaged (weighted by images like a source)",
                             choices=("added", "averaged"))
    align: str = opt("none", "recolour: closed-form CORAL (Sun, Feng & Saenko 2016) at evaluation, no "
                     "training: targets' features mapped to the sources' pooled mean and covariance "
                     "(fedcls.algorithms.coral_align); works with enabled: false", choices=("none", "recolour"))
    recolour_eps: float = opt(1.0, "regularisation eps of C + eps I, relative to the mean feature variance",
                              gt=0, hint="e.g. 1.0")


CONTINUAL_KINDS = ("none", "class_incremental", "domain_incremental")
CONTINUAL_METHODS = ("naive", "ewc", "replay", "ewc+replay")


@dataclass
class ContinualConfig:
    kind: str = opt("none", "none | class_incremental | domain_incremental", choices=CONTINUAL_KINDS)
    experiences: int = opt(5, "experiences in each site's stream", ge=1)
    rounds_per_experience: int = opt(4, "rounds each experience lasts", ge=1)
    class_order: str = opt("seeded", "class_incremental: seeded (a permutation drawn from seed) | fixed (0..K-1)",
                           choices=("seeded", "fixed"))
    domains: list = opt(["rotate:0", "rotate:60", "rotate:120", "rotate:180", "rotate:240"],
                        "domain_incremental: one domain per experience")
    schedule: str = opt("synchronous", "synchronous | staggered (sites reach each experience at different "
                        "rounds)", choices=("synchronous", "staggered"))
    stagger: int = opt(2, "staggered: the last site trails site 0 by this many rounds", ge=0)
    late_sites: int = opt(0, "the last N sites join the federation at join_round", ge=0)
    join_round: int = opt(1, "the round the late sites join", ge=1)
    method: str = opt("naive", "naive | ewc | replay | ewc+replay", choices=CONTINUAL_METHODS)
    ewc_lambda: float = opt(100.0, "EWC penalty weight (Avalanche's lambda * F_j * (w_j - w*_j)^2)", ge=0)
    ewc_cap: float = opt(0.5, "keep lr*ewc_lambda*F_j <= ewc_cap*(1+momentum), the fraction of the "
                         "momentum-SGD stability bound the penalty may use, by capping F_j (0: uncapped, warns)",
                         ge=0, lt=1, hint="a fraction of the EWC penalty's stability bound "
                         "lr*ewc_lambda*F < 1+momentum; 0: no cap")
    ewc_mode: str = opt("separate", "separate (a penalty per past experience) | online (one, decayed)",
                        choices=("separate", "online"))
    ewc_decay: float = opt(1.0, "online mode: decay of the old importances", ge=0)
    memory_size: int = opt(200, "replay: samples kept per site, split over the experiences seen", ge=1)
    aggregate_importances: bool = opt(False, "EWC: sites regularise with the federation's mean importances")
    plugins: list = opt([], "more Avalanche plugins at the sites, e.g. ['LwFPlugin(alpha=1)']")


@dataclass
class BackendConfig:
    num_cpus: int = opt(1, "CPUs per client actor (Ray client_resources)", gt=0)
    num_gpus: float = opt(0.0, "GPUs per client actor; fractions share a GPU (0.25 = 4 actors per GPU)", ge=0)
    ray_address: str | None = opt(None, "null starts Ray here (or, Ray's rule, attaches to a `ray start` "
                                        "instance of this machine); auto or host:port attaches to a running cluster")
    keep_actors: bool = opt(False, "leave the client actors running in the Ray this run attached to (a `ray start` "
                            "instance), warm for the next run of the same code, which then skips their start-up; "
                            "`ray stop` ends them")
    executor: str = opt("clientapp", "clientapp (a Flower ClientApp per client, the reference) | cohort (Ray "
                        "actors each train many clients at once, vmapped; fedcls.apps.cohort) | inprocess (the "
                        "ClientApp called in this process, no Ray: the same numbers; a sweep runs such runs side "
                        "by side; fedcls.engine.inprocess)",
                        choices=("clientapp", "cohort", "inprocess"))
    cohort_size: int = opt(0, "cohort: clients trained together per actor call; 0 = all of an actor's", ge=0,
                           hint="0: all")
    cohort_actors: int = opt(1, "cohort: actors (each takes backend.num_cpus and backend.num_gpus)", ge=1)
    precision: str = opt("fp32", "cohort: fp32 | bf16 (autocast on CUDA)", choices=("fp32", "bf16"))
    pre_aggregate: bool = opt(False, "cohort: average a cohort's weights in its actor (weighted-mean strategies)")
    channels_last: bool = opt(False, "cohort: channels_last memory format for CNN inputs on CUDA")
    tf32: bool = opt(False, "allow TF32 matmuls/convolutions on CUDA (faster, ~1e-3 relative error)")


FAULT_KINDS = ("drop_prob", "crash_prob", "nan_prob", "straggler_prob")
# what a Byzantine site sends (acted out by fedcls.apps.faults.malicious; "cycle": one each round)
BYZANTINE_ATTACKS = ("huge_count", "negative_count", "tiny_shape", "huge_weights", "wrong_shape", "extra_key",
                     "missing_key", "boosted", "bad_metric", "impostor")  # the first six: issue 16's findings


@dataclass
class FaultsConfig:
    drop_prob: float = opt(0.0, "a sampled client does not answer", ge=0, le=1)
    crash_prob: float = opt(0.0, "the ClientApp raises", ge=0, le=1)
    nan_prob: float = opt(0.0, "the client returns non-finite weights (the server rejects them)", ge=0, le=1)
    straggler_prob: float = opt(0.0, "the client answers straggler_delay seconds late", ge=0, le=1)
    straggler_delay: float = opt(10.0, "seconds", ge=0, hint="seconds")
    round_timeout: float = opt(0.0, "seconds the server waits for training replies (0: no limit); later ones "
                               "are dropped. Not in the first round a run (or a resume) starts, which also "
                               "starts the actors; injected stragglers miss it there too",
                               ge=0, hint="seconds; 0: no limit")
    min_train_nodes: int = opt(1, "fewer usable replies in a round stop the run (resumable from its "
                               "checkpoint)", ge=1, hint="and at most num_clients")
    byzantine_site: int = opt(-1, "a site that sends a malicious reply every training round, to test the "
                              "server's screening (-1: none)", ge=-1, hint="-1 or a site id")
    byzantine_attack: str = opt("cycle", "what the Byzantine site sends (cycle: each attack in turn, one per "
                                "round)", choices=("cycle", *BYZANTINE_ATTACKS))

    def probabilities(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in FAULT_KINDS}


@dataclass
class ScreeningConfig:
    max_examples: int = opt(0, "a cap on the num-examples a site's training reply may claim, over the "
                            "training samples it declared at start-up (0: no cap)", ge=0)
    norm_ratio: float = opt(100.0, "reject an update longer than this many times the round's median update "
                            "(0: off; rounds with 3+ replies that trained). Honest sites measured up to 7.9x "
                            "(quantity_0.5, round 1): 100 refuses only gross outliers (1e30 weights, x1000 "
                            "boosting)", ge=0)


@dataclass
class CompressionConfig:
    kind: str = opt("none", "none | float16 | int8 (per-tensor symmetric) | topk (largest entries): the "
                    "sites' model updates, compressed on the wire", choices=("none", "float16", "int8", "topk"))
    topk_fraction: float = opt(0.01, "topk: share of each tensor's entries sent", gt=0, le=1)
    error_feedback: bool = opt(True, "a site adds what compression left out to its next update")


@dataclass
class PrivacyConfig:
    dp: str = opt("none", "differential privacy: none | central (the server clips each site's update and "
                  "adds Gaussian noise to their mean: Flower's server-side DP wrappers) | client_clipping "
                  "(sites clip with Flower's clipping mod, the server adds the noise) | dpsgd (sample-level "
                  "DP-SGD at each site with Opacus)", choices=("none", "central", "client_clipping", "dpsgd"))
    noise_multiplier: float = opt(1.0, "noise std / clipping norm (central and client_clipping: of the "
                                  "sites' update sum; dpsgd: of each batch's gradient sum)", ge=0)
    clipping_norm: float = opt(1.0, "central, client_clipping: the L2 bound on a site's update; dpsgd: on "
                               "each sample's gradient", gt=0)
    clipping: str = opt("fixed", "central: fixed or adaptive clipping (Andrew et al. 2021: the norm tracks "
                        "a quantile of the updates' norms)", choices=("fixed", "adaptive"))
    target_epsilon: float | None = opt(None, "dpsgd: the epsilon every site may spend over the whole run; "
                                       "sizes the noise multiplier (null: use noise_multiplier)", gt=0,
                                       hint="or null to use noise_multiplier")
    delta: float = opt(1e-5, "the delta of the (epsilon, delta) guarantee reported", gt=0, lt=1)
    secagg: bool = opt(False, "secure aggregation with Flower's SecAgg+: the server sees only the sum of the "
                       "sites' (quantised) updates")
    secagg_shares: float = opt(1.0, "SecAgg+: share of the sampled sites each one shares its secrets with "
                               "(Flower's num_shares as a fraction)", gt=0, le=1)
    secagg_threshold: float = opt(0.5, "SecAgg+: share of a site's secret shares needed to reconstruct it "
                                  "(Flower's reconstruction_threshold): the most sites that may drop mid-"
                                  "round is the rest", gt=0, le=1)
    secagg_clipping_range: float = opt(8.0, "SecAgg+: weights are clipped to +-this before quantisation",
                                       gt=0)
    secagg_quantization_range: int = opt(4194304, "SecAgg+: quantisation levels over the clipping range "
                                         "(2^22: steps of 4e-6 at range 8)", ge=2)


@dataclass
class TrackingConfig:
    tensorboard: bool = opt(True, "TensorBoard event files in <run folder>/tensorboard (tensorboard --logdir "
                            "results/runs)")
    mlflow: bool = opt(False, "log to MLflow too (pip install mlflow-skinny)")
    mlflow_uri: str = opt("file:results/mlruns", "MLflow tracking URI: a local file store, or a server's URL")
    mlflow_experiment: str = opt("fedcls", "the MLflow experiment the runs go to")


@dataclass
class Config:
    """A run's config (see ``schema_text`` for every key)."""

    scenario: str | None = opt(None, "scenarios/<name>.yaml merged over these defaults (a name, not a path)")
    scenario_file: str | None = opt(None, "a scenario YAML file of your own, merged like scenario=NAME")
    dataset: str = opt("mnist5k", "mnist5k | digits | synthetic | mnist | fashion_mnist | cifar10 | cifar100 | "
                       "svhn | usps | imagefolder | medmnist:<flag> (e.g. medmnist:pathmnist) | "
                       "hf:<Hugging Face name or local folder>")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the shared classifier"})
    strategy: StrategyConfig = field(default_factory=StrategyConfig, metadata={"help": "the aggregation strategy"})
    num_clients: int = opt(10, "simulated sites (Flower SuperNodes)", ge=1)
    rounds: int = opt(20, "federated rounds", ge=1)
    local_epochs: int = opt(10, "NIID-Bench: 10 local epochs per round", ge=1)
    batch_size: int = opt(64, "NIID-Bench: 64", ge=1)
    lr: float = opt(0.01, "NIID-Bench: SGD lr 0.01, momentum 0.9", gt=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = opt(0.0, "SGD weight decay", ge=0)
    fraction_train: float = opt(1.0, "share of sites sampled for training each round", gt=0, le=1)
    fraction_evaluate: float = opt(1.0, "share of sites that evaluate the new global model on their local "
                                   "test split", ge=0, le=1)
    seed: int = opt(0, "seeds partition, sampling, model init and local training", ge=0)
    device: str = opt("auto", "auto (CUDA when backend.num_gpus > 0 and available) | cpu | cuda",
                      choices=("auto", "cpu", "cuda"))
    partition: PartitionConfig = field(default_factory=PartitionConfig, metadata={"help": "how sites split the data"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the dataset's files and preprocessing"})
    domain: DomainConfig = field(default_factory=DomainConfig, metadata={
        "help": "sites that differ in domain (scanners, cameras) and held-out targets"})
    coral: CoralConfig = field(default_factory=CoralConfig, metadata={"help": "Deep CORAL between sites"})
    continual: ContinualConfig = field(default_factory=ContinualConfig, metadata={
        "help": "sites add classes or meet new domains over time (off: kind none)"})
    backend: BackendConfig = field(default_factory=BackendConfig, metadata={"help": "Ray and the executor"})
    output_dir: str = opt("results/runs", "the run folder <output_dir>/<run_id>/ is created under it")
    run_id: str | None = opt(None, "default: <time>-<scenario>-<strategy>-s<seed>")
    save_model: bool = opt(True, "write model.pt at the end")
    plots: str = opt("png+pdf", "a run's own figures in plots/: png+pdf | png | none (a sweep's runs default to "
                     "png: the study's report draws its own PDFs)", choices=("png+pdf", "png", "none"))
    checkpoint_every: int = opt(1, "rounds between checkpoints (resume=<run folder> continues); 0: none", ge=0,
                                hint="0: none")
    faults: FaultsConfig = field(default_factory=FaultsConfig, metadata={
        "help": "injected, seeded by (seed, round, site), recorded per round"})
    screening: ScreeningConfig = field(default_factory=ScreeningConfig, metadata={
        "help": "the server's checks on each training reply (fedcls.apps.screening)"})
    compression: CompressionConfig = field(default_factory=CompressionConfig, metadata={
        "help": "update compression at the sites (fedcls.algorithms.compression)"})
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata={
        "help": "differential privacy and secure aggregation (fedcls.algorithms.privacy, .dpsgd, .secagg)"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={
        "help": "experiment trackers the rounds are written to besides metrics.jsonl"})
    verbose: bool = opt(False, "show Flower and Ray logs")

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """The typed config of a plain dict (as composed, saved in config.yaml or sent to a site);
        ConfigError naming the key for a wrong type or a value out of its range or choices."""
        return _build(cls, values, "")

    def to_dict(self) -> dict:
        """The plain dict with the keys users type (config.yaml, the message to the sites)."""
        return _plain(self)


def key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def defaults() -> dict:
    """Every key's default, as a plain dict."""
    return Config().to_dict()


def _plain(node: Any) -> Any:
    if isinstance(node, StrategyConfig):
        return {"name": node.name, **copy.deepcopy(node.params)}
    if dataclasses.is_dataclass(node):
        return {key_of(f): _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
    return copy.deepcopy(node)


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a section of keys, got {values!r}")
    if cls is StrategyConfig:
        return StrategyConfig(str(values.get("name", "fedavg")),
                              {k: v for k, v in values.items() if k != "name"})
    fields = {key_of(f): f for f in dataclasses.fields(cls)}
    if unknown := [k for k in values if k not in fields]:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'. "
                          "See python -m fedcls.simulate --help for the keys.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        if key in values:
            kwargs[f.name] = _value(hints[f.name], values[key], f, f"{prefix}{key}")
    return cls(**kwargs)


def _value(kind: Any, value: Any, f: dataclasses.Field, dotted: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, f"{dotted}.")
    value = _typed(kind, value, dotted)
    _check_range(value, f.metadata, dotted)
    return value


def _typed(kind: Any, value: Any, dotted: str) -> Any:
    if kind == (float | None):
        return None if value is None else _typed(float, value, dotted)
    if kind == (str | None):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ConfigError(f"{dotted} must be a string or null, got {value!r}")
        return value if value is None else str(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted} must be true or false, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a section"}[kind]
        raise ConfigError(f"{dotted} must be {what}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{dotted} must be a finite number, got {value!r}")
    return value


def _check_range(value: Any, meta: Any, dotted: str) -> None:
    if value is None:  # an optional key left unset
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise unknown_name(dotted.replace(".", " ").replace("_", " "), value, list(meta["choices"]), key=dotted)
    low, top = _bounds(meta)
    too_low = low[0] is not None and (value < low[0] if low[1] == "[" else value <= low[0])
    too_high = top[0] is not None and (value > top[0] if top[1] == "]" else value >= top[0])
    if too_low or too_high:
        hint = f" ({meta['hint']})" if meta.get("hint") else ""
        raise ConfigError(f"{dotted} must be {_range_text(low, top)}{hint}, got {value}")


def _bounds(meta: Any) -> tuple[tuple, tuple]:
    low = (meta.get("ge"), "[") if meta.get("ge") is not None else (meta.get("gt"), "(")
    top = (meta.get("le"), "]") if meta.get("le") is not None else (meta.get("lt"), ")")
    return low, top


def _valid_text(meta: Any) -> str:
    """The valid range of a key, as --help shows it (choices are in the help texts)."""
    low, top = _bounds(meta)
    return f" [{_range_text(low, top)}]" if low[0] is not None or top[0] is not None else ""


def _range_text(low: tuple, top: tuple) -> str:
    if top[0] is None:
        return f"{'>=' if low[1] == '[' else '>'} {low[0]:g}"
    if low[0] is None:
        return f"{'<=' if top[1] == ']' else '<'} {top[0]:g}"
    return f"in {low[1]}{low[0]:g}, {top[0]:g}{top[1]}"


def schema_text(cls: type = Config, indent: str = "") -> list[str]:
    """Every key with its default and help, nested like a config file (for --help)."""
    import yaml

    lines = []
    for f in dataclasses.fields(cls):
        key, kind = key_of(f), typing.get_type_hints(cls)[f.name]
        help_text = f.metadata.get("help", "")
        if kind is StrategyConfig:
            lines.append(f"{indent}strategy:")
            lines.append(f"{indent}  name: fedavg  # {StrategyConfig.__dataclass_fields__['name'].metadata['help']}")
        elif dataclasses.is_dataclass(kind):
            lines.append(f"{indent}{key}:  # {help_text}" if help_text else f"{indent}{key}:")
            lines += schema_text(kind, indent + "  ")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{indent}{key}: {shown}  # {help_text}{_valid_text(f.metadata)}")
    return lines
