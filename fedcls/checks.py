"""Value checks on a composed config: each failure names the key and the fix."""

from __future__ import annotations

from fedcls.errors import ConfigError, unknown_name


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_names(cfg: dict) -> None:
    from fedcls.algorithms.models import MODELS, NORMS
    from fedcls.data.federated import NORMALIZE
    from fedcls.data.partition import KINDS
    from fedcls.data.sources import SOURCES

    for kind, value, valid, key in (
            ("dataset", cfg["dataset"], list(SOURCES), "dataset"),
            ("model", cfg["model"]["name"], list(MODELS), "model"),
            ("normalisation", cfg["model"]["norm"], list(NORMS), "model.norm"),
            ("input normalisation", cfg["data"]["normalize"], list(NORMALIZE), "data.normalize"),
            ("partition kind", cfg["partition"]["kind"], list(KINDS), "partition.kind"),
            ("device", cfg["device"], ["auto", "cpu", "cuda"], "device"),
            ("executor", cfg["backend"]["executor"], ["clientapp", "cohort"], "backend.executor"),
            ("precision", cfg["backend"]["precision"], ["fp32", "bf16"], "backend.precision")):
        if value not in valid:
            raise unknown_name(kind, value, valid, key=key)


def check_ranges(cfg: dict) -> None:
    part, data, backend = cfg["partition"], cfg["data"], cfg["backend"]
    for key in ("num_clients", "rounds", "local_epochs", "batch_size"):
        _require(cfg[key] >= 1, f"{key} must be >= 1, got {cfg[key]}")
    _require(cfg["lr"] > 0, f"lr must be > 0, got {cfg['lr']}")
    _require(0 <= cfg["momentum"] < 1, f"momentum must be in [0, 1), got {cfg['momentum']}")
    _require(cfg["weight_decay"] >= 0, f"weight_decay must be >= 0, got {cfg['weight_decay']}")
    _require(0 < cfg["fraction_train"] <= 1,
             f"fraction_train must be in (0, 1], got {cfg['fraction_train']}")
    _require(0 <= cfg["fraction_evaluate"] <= 1,
             f"fraction_evaluate must be in [0, 1], got {cfg['fraction_evaluate']}")
    _require(part["alpha"] > 0, f"partition.alpha must be > 0, got {part['alpha']}")
    _require(part["k"] >= 1, f"partition.k must be >= 1, got {part['k']}")
    _require(part["shards_per_client"] >= 1,
             f"partition.shards_per_client must be >= 1, got {part['shards_per_client']}")
    _require(part["sigma"] >= 0, f"partition.sigma must be >= 0, got {part['sigma']}")
    _require(part["min_size"] >= 1, f"partition.min_size must be >= 1, got {part['min_size']}")
    _require(0 < data["test_fraction"] < 1, f"data.test_fraction must be in (0, 1), got {data['test_fraction']}")
    _require(0 <= data["local_test_fraction"] < 1, f"data.local_test_fraction must be in [0, 1) "
             f"(0: all of a site's data trains), got {data['local_test_fraction']}")
    _require(data["local_test_fraction"] > 0 or not cfg["domain"]["targets"],
             "data.local_test_fraction=0 leaves the target sites (domain.targets) no labelled test split "
             "to measure target_accuracy on: set data.local_test_fraction > 0 (e.g. 0.2)")
    syn = data["synthetic"]
    for key in ("num_samples", "num_classes", "channels", "image_size"):
        _require(syn[key] >= 1, f"data.synthetic.{key} must be >= 1, got {syn[key]}")
    _require(backend["num_cpus"] > 0, f"backend.num_cpus must be > 0, got {backend['num_cpus']}")
    _require(backend["num_gpus"] >= 0, f"backend.num_gpus must be >= 0, got {backend['num_gpus']}")
    _require(backend["cohort_size"] >= 0, f"backend.cohort_size must be >= 0 (0: all), got {backend['cohort_size']}")
    _require(backend["cohort_actors"] >= 1, f"backend.cohort_actors must be >= 1, got {backend['cohort_actors']}")
    _require(cfg["checkpoint_every"] >= 0, f"checkpoint_every must be >= 0 (0: none), got {cfg['checkpoint_every']}")
    check_faults(cfg)
    _require(not (cfg["device"] == "cuda" and backend["num_gpus"] == 0),
             "device=cuda needs GPUs for the clients: set backend.num_gpus (e.g. 0.25)")


def check_faults(cfg: dict) -> None:
    f = cfg["faults"]
    probs = {k: f[k] for k in ("drop_prob", "crash_prob", "nan_prob", "straggler_prob")}
    for key, p in probs.items():
        _require(0 <= p <= 1, f"faults.{key} must be in [0, 1], got {p}")
    _require(sum(probs.values()) <= 1, f"the fault probabilities add up to {sum(probs.values()):g}; "
             f"a client has one fault at most, so their sum must be <= 1")
    _require(f["straggler_delay"] >= 0, f"faults.straggler_delay must be >= 0 seconds, got {f['straggler_delay']}")
    _require(f["round_timeout"] >= 0, f"faults.round_timeout must be >= 0 seconds (0: no limit), got {f['round_timeout']}")
    _require(1 <= f["min_train_nodes"] <= cfg["num_clients"],
             f"faults.min_train_nodes must be in [1, num_clients={cfg['num_clients']}], got {f['min_train_nodes']}")


def check_fits_data(cfg: dict) -> None:
    """Class counts and sizes the dataset can satisfy (known without loading it)."""
    from fedcls.data.sources import SOURCES

    spec, part, n = SOURCES[cfg["dataset"]], cfg["partition"], cfg["num_clients"]
    classes, pool = spec.num_classes(cfg), spec.train_size(cfg)
    _require(part["kind"] != "label_k" or part["k"] <= classes,
             f"partition.k={part['k']} is above the {classes} classes of {cfg['dataset']}")
    per_client = {"shards": part["shards_per_client"], "dirichlet": part["min_size"],
                  "quantity": part["min_size"]}.get(part["kind"], 2)
    _require(n * per_client <= pool,
             f"num_clients={n} is more than {cfg['dataset']}'s {pool} training samples allow "
             f"at {per_client} per client; lower num_clients"
             + (" or partition.min_size" if part["kind"] in ("dirichlet", "quantity") else ""))


def check_values(cfg: dict) -> None:
    """Raise ConfigError for unknown names or impossible values."""
    check_names(cfg)
    check_ranges(cfg)
    check_fits_data(cfg)
    check_continual(cfg)
    check_domain_section(cfg)


METHODS = ("naive", "ewc", "replay", "ewc+replay")


def check_continual(cfg: dict) -> None:
    """The continual section: names, ranges, and enough rounds for every experience."""
    c, n = cfg["continual"], cfg["num_clients"]
    for kind, value, valid in (
            ("continual kind", c["kind"], ["none", "class_incremental", "domain_incremental"]),
            ("continual method", c["method"], list(METHODS)),
            ("class order", c["class_order"], ["seeded", "fixed"]),
            ("schedule", c["schedule"], ["synchronous", "staggered"]),
            ("EWC mode", c["ewc_mode"], ["separate", "online"])):
        if value not in valid:
            raise unknown_name(kind, value, valid, key="continual." + kind.split()[-1].lower())
    if c["kind"] == "none":
        return
    for key in ("experiences", "rounds_per_experience", "join_round", "memory_size"):
        _require(c[key] >= 1, f"continual.{key} must be >= 1, got {c[key]}")
    for key in ("stagger", "late_sites", "ewc_lambda", "ewc_decay"):
        _require(c[key] >= 0, f"continual.{key} must be >= 0, got {c[key]}")
    _require(0 <= c["ewc_cap"] < 1, f"continual.ewc_cap must be in [0, 1) (a fraction of the EWC penalty's "
             f"stability bound lr*ewc_lambda*F < 1+momentum; 0: no cap), got {c['ewc_cap']}")
    _require(c["late_sites"] < n, f"continual.late_sites={c['late_sites']} leaves no site to start "
             f"the federation: use at most num_clients-1 = {n - 1}")
    _check_stream(cfg)
    from fedcls.algorithms.continual.schedule import rounds_needed

    need = rounds_needed(cfg)
    _require(cfg["rounds"] >= need,
             f"rounds={cfg['rounds']} is too few for {c['experiences']} experiences x "
             f"{c['rounds_per_experience']} rounds" + (f" + a stagger of {c['stagger']}" if
                                                       c["schedule"] == "staggered" else "")
             + f": set rounds={need} (or fewer continual.rounds_per_experience)")
    _require(c["join_round"] <= cfg["rounds"],
             f"continual.join_round={c['join_round']} is after the last round ({cfg['rounds']})")
    for spec in c["plugins"]:
        from fedcls.algorithms.continual.plugins import make_plugin

        make_plugin(str(spec))


def _check_stream(cfg: dict) -> None:
    from fedcls.data.domains import check_domain
    from fedcls.data.sources import SOURCES

    c = cfg["continual"]
    if c["kind"] == "class_incremental":
        classes = SOURCES[cfg["dataset"]].num_classes(cfg)
        _require(c["experiences"] <= classes, f"continual.experiences={c['experiences']} is more "
                 f"than the {classes} classes of {cfg['dataset']} can split into")
    else:
        _require(len(c["domains"]) >= c["experiences"],
                 f"continual.domains lists {len(c['domains'])} domains for {c['experiences']} "
                 "experiences: give one per experience, e.g. [rotate:0, rotate:90, noise:0.3]")
        for i, spec in enumerate(c["domains"][: c["experiences"]]):
            check_domain(spec, key=f"continual.domains[{i}]")


def check_domain_section(cfg: dict) -> None:
    """Site domains, targets, the target dataset and CORAL's settings."""
    from fedcls.data.domains import check_domain
    from fedcls.data.sources import SOURCES

    d, c, n = cfg["domain"], cfg["coral"], cfg["num_clients"]
    for i, spec in enumerate(d["sites"]):
        check_domain(spec, key=f"domain.sites[{i}]")
    targets = d["targets"]
    _require(all(isinstance(t, int) and 0 <= t < n for t in targets),
             f"domain.targets={targets} must be site ids in 0..{n - 1}")
    _require(len(set(targets)) < n, "domain.targets names every site: leave at least one source site to train")
    if d["target_dataset"] is not None:
        if d["target_dataset"] not in SOURCES:
            raise unknown_name("dataset", d["target_dataset"], list(SOURCES), key="domain.target_dataset")
        _require(bool(targets), "domain.target_dataset needs target sites to hold it: set domain.targets, e.g. [4]")
        _require(SOURCES[d["target_dataset"]].num_classes(cfg) == SOURCES[cfg["dataset"]].num_classes(cfg),
                 f"domain.target_dataset={d['target_dataset']} has other classes than dataset={cfg['dataset']}")
    if c["mode"] not in ("target", "pooled"):
        raise unknown_name("CORAL mode", c["mode"], ["target", "pooled"], key="coral.mode")
    _require(c["lambda"] >= 0, f"coral.lambda must be >= 0, got {c['lambda']}")
    if cfg["data"]["digits_framing"] not in ("full", "mnist"):
        raise unknown_name("digits framing", cfg["data"]["digits_framing"], ["full", "mnist"],
                           key="data.digits_framing")
    if c["loss"] not in ("cosine", "paper"):
        raise unknown_name("CORAL loss", c["loss"], ["cosine", "paper"], key="coral.loss")
    if c["target_update"] not in ("added", "averaged"):
        raise unknown_name("CORAL target update", c["target_update"], ["added", "averaged"],
                           key="coral.target_update")
    if c["align"] not in ("none", "recolour"):
        raise unknown_name("CORAL alignment", c["align"], ["none", "recolour"], key="coral.align")
    _require(c["align"] == "none" or bool(targets),
             "coral.align=recolour re-colours target sites' features: set domain.targets=[...]")
    _require(c["recolour_eps"] > 0, f"coral.recolour_eps must be > 0 (e.g. 1.0), got {c['recolour_eps']}")
    _require(not (c["enabled"] and c["mode"] == "target" and not targets),
             "coral.mode=target needs target sites (domain.targets=[...]) or coral.mode=pooled")
    _require(not (cfg["continual"]["kind"] != "none" and (targets or d["sites"])),
             "continual runs do not take site domains or targets yet: use continual.domains for "
             "domain-incremental streams, or leave domain.sites and domain.targets empty")


def check_capabilities(cfg: dict) -> None:
    """The strategy's declared capabilities (strategies.Capabilities) against the model's BatchNorm."""
    import strategies
    from fedcls.algorithms.models import BATCHNORM_MODELS, has_batchnorm

    name, model = cfg["strategy"]["name"], cfg["model"]["name"]
    caps, batchnorm = strategies.capabilities(name), has_batchnorm(cfg["model"])
    if caps.needs_batchnorm and not batchnorm:
        raise ConfigError(f"strategy={name} needs a model with BatchNorm; {model} has none: use {BATCHNORM_MODELS}")
    if not caps.integer_buffers and batchnorm:
        raise ConfigError(f"strategy={name} cannot aggregate the integer BatchNorm counters of model={model}: "
                          "use a model without BatchNorm (e.g. model=simple_cnn, or model.norm=group for resnet18)")
