"""Checks on a typed config that the schema cannot make alone: names found in the registries of
the layers below, values impossible only together, what the dataset can hold. Each failure names
the key and the fix."""

from __future__ import annotations

import re

from fedcls.errors import ConfigError, unknown_name
from fedcls.schema import Config


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_names(cfg: Config) -> None:
    """Names found in registries of the layers below (the schema checks its own fixed choices)."""
    from fedcls.algorithms.models import MODELS, NORMS
    from fedcls.data.catalog import source_spec
    from fedcls.data.federated import NORMALIZE
    from fedcls.data.partition import check_kind

    source_spec(cfg.dataset)
    check_kind(cfg.partition.kind)
    for kind, value, valid, key in (
            ("model", cfg.model.name, list(MODELS), "model"),
            ("normalisation", cfg.model.norm, list(NORMS), "model.norm"),
            ("input normalisation", cfg.data.normalize, list(NORMALIZE), "data.normalize")):
        if value not in valid:
            raise unknown_name(kind, value, valid, key=key)


def check_across_keys(cfg: Config) -> None:
    """Values that are only impossible together (each key's own range is the schema's)."""
    _require(cfg.run_id is None or (re.fullmatch(r"[A-Za-z0-9._=-]+", cfg.run_id) is not None
                                     and cfg.run_id not in (".", "..")),
             f"run_id must be a plain folder name (letters, digits, . _ = -), got {cfg.run_id!r}: the run folder "
             f"is created under output_dir")
    _require(not (cfg.backend.keep_actors and cfg.backend.executor != "clientapp"),
             f"backend.keep_actors keeps the ClientApp executor's actors; the {cfg.backend.executor} executor "
             f"has none to keep: drop backend.keep_actors (or use backend.executor=clientapp)")
    _require(cfg.data.local_test_fraction > 0 or not cfg.domain.targets,
             "data.local_test_fraction=0 leaves the target sites (domain.targets) no labelled test split "
             "to measure target_accuracy on: set data.local_test_fraction > 0 (e.g. 0.2)")
    check_faults(cfg)
    check_privacy(cfg)
    _require(cfg.compression.kind == "none" or not cfg.backend.pre_aggregate,
             "compression sends each site's update compressed and the server decodes it, but backend.pre_aggregate "
             "averages a cohort's replies in the actor first: set backend.pre_aggregate=false")
    _require(not (cfg.device == "cuda" and cfg.backend.num_gpus == 0),
             "device=cuda needs GPUs for the clients: set backend.num_gpus (e.g. 0.25)")


def check_faults(cfg: Config) -> None:
    f, total = cfg.faults, sum(cfg.faults.probabilities().values())
    _require(total <= 1, f"the fault probabilities add up to {total:g}; "
             f"a client has one fault at most, so their sum must be <= 1")
    _require(f.min_train_nodes <= cfg.num_clients,
             f"faults.min_train_nodes must be in [1, num_clients={cfg.num_clients}], got {f.min_train_nodes}")
    _require(f.byzantine_site < cfg.num_clients,
             f"faults.byzantine_site must be -1 or a site in [0, {cfg.num_clients - 1}], got {f.byzantine_site}")
    _require(f.byzantine_site < 0 or not cfg.backend.pre_aggregate,
             "faults.byzantine_site tests the server's screening of each site's reply, but backend.pre_aggregate "
             "averages a cohort's replies before the server sees them: set backend.pre_aggregate=false")


def check_privacy(cfg: Config) -> None:
    """Differential privacy and SecAgg+ where they are sound (fedcls.algorithms.privacy, .dpsgd, .secagg)."""
    import strategies
    from fedcls.algorithms.models import has_batchnorm
    from fedcls.algorithms.privacy import sampled_sites

    p, name = cfg.privacy, cfg.strategy.name
    caps = strategies.capabilities(name)
    if p.dp in ("central", "client_clipping"):
        _require(caps.plain_mean, f"privacy.dp={p.dp} noises the mean of the sites' updates, but strategy={name} "
                 "releases more than that mean (a server optimiser, server state or extra records computed from "
                 "un-noised updates): use strategy=fedavg, fedprox or moon, or privacy.dp=dpsgd")
        _require(cfg.continual.kind == "none", f"privacy.dp={p.dp} with continual learning: a site with no data in "
                 "an experience sends a zero update, which Flower 1.42's clipping divides by; set continual.kind=none")
        sampled = sampled_sites(cfg)
        _require(p.clipping == "fixed" or p.dp == "central", "privacy.clipping=adaptive is server-side "
                 "(Flower has no adaptive clipping mod for this wrapper here): use privacy.dp=central")
        _require(p.clipping == "fixed" or p.noise_multiplier < sampled / 10,
                 f"privacy.clipping=adaptive spends part of the noise on the clipped-count estimate (std "
                 f"sampled sites / 20 = {sampled / 20:g}, Andrew et al. 2021), so noise_multiplier must stay below "
                 f"{sampled / 10:g} with {sampled} sites sampled per round: lower privacy.noise_multiplier, sample "
                 "more sites, or use privacy.clipping=fixed")
    if p.dp == "client_clipping":
        _require(cfg.compression.kind == "none", "privacy.dp=client_clipping clips the weights a site sends, "
                 "which compression has already encoded: set compression.kind=none (or privacy.dp=central)")
        _require(cfg.backend.executor != "cohort", "privacy.dp=client_clipping clips in Flower's ClientApp mod, "
                 "which the cohort executor does not run: set backend.executor=clientapp (or privacy.dp=central)")
    if p.dp == "dpsgd":
        _require(not has_batchnorm(cfg.model), f"privacy.dp=dpsgd needs per-sample gradients, which Opacus cannot "
                 f"compute through BatchNorm (model={cfg.model.name}, model.norm={cfg.model.norm}): use "
                 "model=simple_cnn, or model.norm=group for resnet18")
        _require(cfg.model.name != "vit_tiny", "privacy.dp=dpsgd needs per-sample gradients, which Opacus cannot "
                 "compute for model=vit_tiny (torch's MultiheadAttention and its class/position parameters): use "
                 "model=simple_cnn, mlp, or resnet18 with model.norm=group")
        _require(strategies.get(name).client_hooks is strategies.get("fedavg").client_hooks,
                 f"privacy.dp=dpsgd trains with Opacus's own SGD, without strategy={name}'s local terms: use a "
                 "strategy without a client half (fedavg, fedavgm, fedadam, fedyogi, fedadagrad)")
        _require(cfg.continual.kind == "none" and not cfg.coral.enabled,
                 "privacy.dp=dpsgd trains the plain classification loss: it does not combine with continual "
                 "learning or CORAL (set continual.kind=none, coral.enabled=false)")
    if p.secagg:
        check_secagg(cfg, caps.weighted_mean)


def check_secagg(cfg: Config, weighted_mean: bool) -> None:
    p, name = cfg.privacy, cfg.strategy.name
    _require(weighted_mean, f"privacy.secagg=true gives the server only the sum of the sites' weights, but "
             f"strategy={name} needs each site's own reply: use fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad")
    _require(p.dp in ("none", "dpsgd"), f"privacy.secagg=true hides each site's update, which privacy.dp={p.dp} "
             "clips at the server: use privacy.dp=dpsgd (noise at the sites) or privacy.secagg=false")
    _require(cfg.compression.kind == "none", "privacy.secagg=true quantises and masks the weights itself: set "
             "compression.kind=none")
    _require(cfg.backend.executor != "cohort", "privacy.secagg=true runs in Flower's ClientApp mod, which the cohort "
             "executor does not run: set backend.executor=clientapp")
    _require(cfg.faults.byzantine_site < 0, "faults.byzantine_site tests the server's screening of each reply, "
             "which SecAgg+ hides: set privacy.secagg=false or faults.byzantine_site=-1")
    from fedcls.algorithms.privacy import sampled_sites

    sampled = sampled_sites(cfg)
    _require(sampled >= 3, f"privacy.secagg=true with {sampled} site(s) sampled per round (num_clients={cfg.num_clients}, "
             f"fraction_train={cfg.fraction_train:g}) hides nothing: with two, each learns the other's update from the "
             "sum. Sample at least 3 sites (raise num_clients or fraction_train)")
    _require(sampled * p.secagg_quantization_range < 2 ** 32,
             f"privacy.secagg=true with {sampled} sites and privacy.secagg_quantization_range="
             f"{p.secagg_quantization_range}: the masked sum overflows Flower's 2^32 modulus; lower the quantization "
             "range or sample fewer sites")
    _require(cfg.faults.straggler_prob == 0, "faults.straggler_prob delays each site's reply at the server, which "
             "SecAgg+'s four exchanges bypass: set faults.straggler_prob=0 (faults.round_timeout still applies)")
    _require(cfg.continual.kind == "none" and not cfg.coral.enabled,
             "privacy.secagg=true sums only the weights, but continual learning (EWC's importances) and CORAL send "
             "or rewrite per-site records: set continual.kind=none and coral.enabled=false, or privacy.secagg=false")


def check_fits_data(cfg: Config) -> None:
    """Class counts and sizes the dataset can satisfy (known without loading it)."""
    from fedcls.data.catalog import source_spec

    spec, part, n = source_spec(cfg.dataset), cfg.partition, cfg.num_clients
    classes, pool = spec.num_classes(cfg.data), spec.train_size(cfg.data)
    _require(part.kind != "label_k" or part.k <= classes,
             f"partition.k={part.k} is above the {classes} classes of {cfg.dataset}")
    per_client = {"shards": part.shards_per_client, "dirichlet": part.min_size,
                  "quantity": part.min_size}.get(part.kind, 2)
    _require(n * per_client <= pool,
             f"num_clients={n} is more than {cfg.dataset}'s {pool} training samples allow "
             f"at {per_client} per client; lower num_clients"
             + (" or partition.min_size" if part.kind in ("dirichlet", "quantity") else ""))


def check_values(cfg: Config) -> None:
    """Raise ConfigError for unknown names or impossible values."""
    check_names(cfg)
    check_across_keys(cfg)
    check_fits_data(cfg)
    check_continual(cfg)
    check_domain_section(cfg)


def check_continual(cfg: Config) -> None:
    """The continual section: enough rounds for every experience, a stream the data can give."""
    c, n = cfg.continual, cfg.num_clients
    if c.kind == "none":
        return
    _require(c.late_sites < n, f"continual.late_sites={c.late_sites} leaves no site to start "
             f"the federation: use at most num_clients-1 = {n - 1}")
    _check_stream(cfg)
    from fedcls.algorithms.continual.schedule import rounds_needed

    need = rounds_needed(cfg)
    _require(cfg.rounds >= need,
             f"rounds={cfg.rounds} is too few for {c.experiences} experiences x "
             f"{c.rounds_per_experience} rounds" + (f" + a stagger of {c.stagger}" if
                                                    c.schedule == "staggered" else "")
             + f": set rounds={need} (or fewer continual.rounds_per_experience)")
    _require(c.join_round <= cfg.rounds,
             f"continual.join_round={c.join_round} is after the last round ({cfg.rounds})")
    for spec in c.plugins:
        from fedcls.algorithms.continual.plugins import make_plugin

        make_plugin(str(spec))


def _check_stream(cfg: Config) -> None:
    from fedcls.data.catalog import source_spec
    from fedcls.data.domains import check_domain

    c = cfg.continual
    if c.kind == "class_incremental":
        classes = source_spec(cfg.dataset).num_classes(cfg.data)
        _require(c.experiences <= classes, f"continual.experiences={c.experiences} is more "
                 f"than the {classes} classes of {cfg.dataset} can split into")
    else:
        _require(len(c.domains) >= c.experiences,
                 f"continual.domains lists {len(c.domains)} domains for {c.experiences} "
                 "experiences: give one per experience, e.g. [rotate:0, rotate:90, noise:0.3]")
        for i, spec in enumerate(c.domains[: c.experiences]):
            check_domain(spec, key=f"continual.domains[{i}]")


def check_domain_section(cfg: Config) -> None:
    """Site domains, targets, the target dataset and CORAL's settings."""
    from fedcls.data.catalog import source_spec
    from fedcls.data.domains import check_domain

    d, c, n = cfg.domain, cfg.coral, cfg.num_clients
    for i, spec in enumerate(d.sites):
        check_domain(spec, key=f"domain.sites[{i}]")
    targets = d.targets
    _require(all(isinstance(t, int) and 0 <= t < n for t in targets),
             f"domain.targets={targets} must be site ids in 0..{n - 1}")
    _require(len(set(targets)) < n, "domain.targets names every site: leave at least one source site to train")
    if d.target_dataset is not None:
        target = source_spec(d.target_dataset, key="domain.target_dataset")
        _require(bool(targets), "domain.target_dataset needs target sites to hold it: set domain.targets, e.g. [4]")
        _require(target.num_classes(cfg.data) == source_spec(cfg.dataset).num_classes(cfg.data),
                 f"domain.target_dataset={d.target_dataset} has other classes than dataset={cfg.dataset}")
    _require(c.align == "none" or bool(targets),
             "coral.align=recolour re-colours target sites' features: set domain.targets=[...]")
    _require(not (c.enabled and c.mode == "target" and not targets),
             "coral.mode=target needs target sites (domain.targets=[...]) or coral.mode=pooled")
    _require(not (cfg.continual.kind != "none" and (targets or d.sites)),
             "continual runs do not take site domains or targets yet: use continual.domains for "
             "domain-incremental streams, or leave domain.sites and domain.targets empty")


def check_capabilities(cfg: Config) -> None:
    """The strategy's declared capabilities (strategies.Capabilities) against the model's BatchNorm."""
    import strategies
    from fedcls.algorithms.models import BATCHNORM_MODELS, has_batchnorm

    name, model = cfg.strategy.name, cfg.model.name
    caps, batchnorm = strategies.capabilities(name), has_batchnorm(cfg.model)
    if caps.needs_batchnorm and not batchnorm:
        raise ConfigError(f"strategy={name} needs a model with BatchNorm; {model} has none: use {BATCHNORM_MODELS}")
    if not caps.integer_buffers and batchnorm:
        raise ConfigError(f"strategy={name} cannot aggregate the integer BatchNorm counters of model={model}: "
                          "use a model without BatchNorm (e.g. model=simple_cnn, or model.norm=group for resnet18)")
