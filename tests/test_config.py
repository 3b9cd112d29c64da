import pytest
import yaml

from fedcls.config import compose, scenario_names
from fedcls.errors import ConfigError
from fedcls.schema import Config, ModelConfig, PartitionConfig, StrategyConfig


@pytest.mark.parametrize("name", scenario_names())
def test_every_scenario_file_composes_and_validates(name):
    cfg = compose([f"scenario={name}"])
    assert cfg.scenario == name
    if name in ("digits_shift", "digits_shift_framed", "hospitals"):
        assert cfg.domain.targets == [4] and cfg.partition.kind == "iid"
    elif name == "medmnist_hospitals":  # composes without its file: checks use MedMNIST's own counts
        assert (cfg.dataset, cfg.domain.targets, cfg.partition.kind) == ("medmnist:pathmnist", [5], "dirichlet")
    elif name.startswith("continual_"):
        kinds = {"continual_classes": "class_incremental", "continual_domains": "domain_incremental"}
        assert cfg.continual.kind == kinds[name]
    else:
        assert cfg.partition.kind in name.replace("label", "label_k") or name == "iid"


def test_required_scenarios_exist():
    assert {"iid", "dirichlet_1.0", "dirichlet_0.5", "dirichlet_0.1", "label_1", "label_2",
            "label_3", "quantity_0.5", "noise_0.1"} <= set(scenario_names())


def test_overrides_beat_scenario_which_beats_defaults():
    cfg = compose(["scenario=dirichlet_0.1", "partition.alpha=0.3", "num_clients=20", "lr=1"])
    assert cfg.partition == PartitionConfig(kind="dirichlet", alpha=0.3)
    assert cfg.num_clients == 20 and cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_strategy_choice_fills_its_defaults_in_any_order():
    a = compose(["strategy.proximal_mu=0.5", "strategy=fedprox"])
    b = compose(["strategy=fedprox"])
    assert a.strategy == StrategyConfig("fedprox", {"proximal_mu": 0.5})
    assert b.strategy == StrategyConfig("fedprox", {"proximal_mu": 0.01})
    assert compose([]).strategy == StrategyConfig("fedavg", {})
    assert a.to_dict()["strategy"] == {"name": "fedprox", "proximal_mu": 0.5}  # config.yaml's layout


def test_model_choice_keeps_model_options():
    cfg = compose(["model=resnet18", "model.norm=group"])
    assert cfg.model == ModelConfig("resnet18", "group")


def test_scenario_file_and_yaml_roundtrip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("partition: {kind: label_k, k: 4}\nrounds: 3\n")
    cfg = compose([f"scenario_file={path}", "rounds=4"])
    assert cfg.partition.k == 4 and cfg.rounds == 4 and cfg.scenario_file == str(path)
    assert Config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("args, message", [
    (["scenario=dirichlet_01"], "Did you mean 'dirichlet_0.1'"),
    (["strategy=fedprxo"], "Did you mean 'fedprox'"),
    (["dataset=mnist5"], "Did you mean 'mnist5k'"),
    (["model=simplecnn"], "Did you mean 'simple_cnn'"),
    (["partition.kind=diriclet"], "Did you mean 'dirichlet'"),
    (["partition.alhpa=0.1"], "Did you mean 'partition.alpha'"),
    (["nun_clients=3"], "Did you mean 'num_clients'"),
    (["strategy.proximal_mu=0.1"], "strategy 'fedavg' has no parameter 'proximal_mu'"),
    (["strategy=fedprox", "strategy.mu=0.1"], "Did you mean 'strategy.proximal_mu'"),
    (["partition.alpha=0"], "partition.alpha must be > 0"),
    (["partition.alpha=-1"], "partition.alpha must be > 0"),
    (["num_clients=0"], "num_clients must be >= 1"),
    (["num_clients=3000"], "num_clients=3000 is more than"),
    (["scenario=dirichlet_0.1", "num_clients=401"], "lower num_clients or partition.min_size"),
    (["fraction_train=0"], "fraction_train must be in (0, 1]"),
    (["fraction_train=1.5"], "fraction_train must be in (0, 1]"),
    (["rounds=0"], "rounds must be >= 1"),
    (["scenario=label_2", "partition.k=11"], "partition.k=11 is above the 10 classes"),
    (["lr=fast"], "lr must be a number"),
    (["num_clients=2.5"], "num_clients must be an integer"),
    (["num_clients=true"], "num_clients must be an integer, got True"),
    (["lr=inf"], "lr must be a finite number"),
    (["lr=nan"], "lr must be a finite number"),
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["verbose=maybe"], "verbose must be true or false"),
    (["strategy=fedprox", "strategy.proximal_mu=-1"], "strategy.proximal_mu must be >= 0"),
    (["device=cuda"], "set backend.num_gpus"),
    (["partition=dirichlet"], "'partition' is a section"),
    (["strategy=fedavg,fedprox"], "is a sweep"),
    (["rounds"], "cannot parse 'rounds'"),
])
def test_bad_input_names_the_key(args, message):
    with pytest.raises(ConfigError) as err:
        compose(args)
    assert message in str(err.value)


def test_unknown_key_in_scenario_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("partition: {kind: iid, alfa: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*partition.alfa.*partition.alpha"):
        compose([f"scenario_file={path}"])


@pytest.mark.parametrize("args", [
    ["scenario=dirichlet_0.1"],
    ["scenario=label_2", "strategy=fedprox", "strategy.proximal_mu=0.05", "seed=3", "lr=0.02", "run_id=mine"],
    ["scenario=hospitals", "coral.enabled=true", "model=simple_cnn"],
    ["dataset=synthetic", "data.synthetic.num_samples=300", "domain.sites=['blur:0.5','noise:0.1']", "num_clients=3"],
    ["dataset=synthetic", "continual.kind=class_incremental", "continual.method=ewc+replay", "rounds=20"],
])
def test_the_rerun_command_composes_the_same_config(args):
    import shlex

    from fedcls.config import rerun_command

    cfg = compose(args)
    command = rerun_command(cfg)
    assert command.startswith("python -m fedcls.simulate ") and "run_id" not in command
    again = compose(shlex.split(command)[3:])
    mine, theirs = cfg.to_dict(), again.to_dict()
    for key in ("run_id", "output_dir"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


def test_a_runs_summary_command_reruns_its_rounds(tmp_path, monkeypatch):
    """summary.json's command, composed and run again, gives the same rounds (in-process, the
    ClientApp's own functions) and names every library version that sets the numbers."""
    import json
    import shlex

    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.config import rerun_command
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder
    from strategy_helpers import identity

    identity(monkeypatch)

    def run(cfg, name):
        recorder = Recorder(tmp_path / name, cfg, echo=lambda line: None, command=rerun_command(cfg))
        run_federation(CohortGrid(cfg.num_clients, [CohortWorker(per_client=True)], echo=lambda line: None), cfg,
                       federated_data(cfg), recorder)
        recorder.finish()
        return recorder.rows, json.loads((tmp_path / name / "summary.json").read_text())

    first, summary = run(compose(["dataset=synthetic", "data.synthetic.num_samples=300", "num_clients=3", "rounds=2",
                                  "local_epochs=1", "model=mlp", "lr=0.03", "seed=5", "save_model=false"]), "first")
    assert {"flwr", "torch", "ray", "avalanche-lib"} <= set(summary["versions"])
    again, _ = run(compose(shlex.split(summary["command"])[3:]), "again")
    assert [(r["accuracy"], r["loss"]) for r in again] == [(r["accuracy"], r["loss"]) for r in first]
