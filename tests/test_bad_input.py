"""Bad input across the whole CLI: every case exits 2 with a one-line message naming the fix,
no traceback, and nothing is run (types, ranges, unknown names, data folders, checkpoints)."""

import pytest

import fedcls.engine.simulation
from fedcls.simulate import main

CASES = [  # (arguments, words the message must contain)
    (["scenario=nope"], "unknown scenario"),
    (["strategy=fedprxo"], "Did you mean 'fedprox'"),
    (["dataset=mnist5"], "Did you mean 'mnist5k'"),
    (["model=simplecnn"], "Did you mean 'simple_cnn'"),
    (["partition.kind=diriclet"], "Did you mean 'dirichlet'"),
    (["nun_clients=3"], "Did you mean 'num_clients'"),
    (["lr=fast"], "lr must be a number"),
    (["backend.executor=cohort", "backend.keep_actors=true"], "the cohort executor has none to keep"),
    (["backend.executor=inprocess", "backend.keep_actors=true"], "the inprocess executor has none to keep"),
    (["lr=-1"], "lr must be > 0"),
    (["momentum=1.5"], "momentum must be in [0, 1)"),
    (["num_clients=2.5"], "num_clients must be an integer"),
    (["rounds=0"], "rounds must be >= 1"),
    (["fraction_train=0"], "fraction_train must be in (0, 1]"),
    (["fraction_evaluate=2"], "fraction_evaluate must be in [0, 1]"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["verbose=maybe"], "verbose must be true or false"),
    (["device=tpu"], "unknown device"),
    (["backend.executor=threads"], "unknown backend executor"),
    (["backend.cohort_size=-1"], "backend.cohort_size must be >= 0"),
    (["backend.cohort_actors=0"], "backend.cohort_actors must be >= 1"),
    (["backend.precision=fp8"], "unknown backend precision"),
    (["checkpoint_every=-1"], "checkpoint_every must be >= 0"),
    (["faults.drop_prob=1.5"], "faults.drop_prob must be in [0, 1]"),
    (["faults.drop_prob=0.6", "faults.crash_prob=0.6"], "add up to 1.2"),
    (["faults.round_timeout=-1"], "faults.round_timeout must be >= 0"),
    (["faults.min_train_nodes=0"], "faults.min_train_nodes must be >= 1 (and at most num_clients)"),
    (["faults.min_train_nodes=11"], "faults.min_train_nodes must be in [1, num_clients=10]"),
    (["partition.alpha=0"], "partition.alpha must be > 0"),
    (["scenario=dirichlet_0.1", "num_clients=401"], "lower num_clients or partition.min_size"),
    (["strategy=fedprox", "strategy.proximal_mu=-1"], "strategy.proximal_mu must be >= 0"),
    (["domain.sites=[blurr]"], "Did you mean 'blur'"),
    (["continual.kind=sometimes"], "continual"),
    (["--bogus"], "unknown option --bogus"),
    (["rounds"], "cannot parse 'rounds'"),
    (["dataset=cifar10", "data.root={tmp}/empty"], "is not under"),
    (["dataset=imagefolder"], "needs data.image_folder"),
    (["dataset=medmnist:bloodmnist", "data.root={tmp}/empty", "data.download=false"], "needs bloodmnist.npz in"),
    (["dataset=medmnist:chestmnist"], "is multi-label"),
    (["dataset=hf:{tmp}/empty"], "holds no dataset load_dataset reads"),
    (["dataset=hf:flwrlabs/femnist", "data.download=false"], "neither a local folder nor in the Hugging Face cache"),
    (["partition.kind=natural"], "partition.id_column"),
    (["dataset=imagefolder", "data.image_folder={tmp}/empty"], "has no train/ folder"),
    (["resume={tmp}/nothing"], "no run folder there"),
    (["resume={tmp}/run_without_checkpoint"], "has no checkpoint.pt"),
    (["resume={tmp}/run_with_corrupt_checkpoint"], "is not a fedcls checkpoint that loads as data"),
    (["resume={tmp}/run_without_checkpoint", "rounds=5"], "takes the run's own config"),
    # issue 16's cases
    (["seed=-1"], "seed must be >= 0, got -1"),
    (["lr=inf"], "lr must be a finite number"),
    (["num_clients=true"], "num_clients must be an integer, got True"),
    (["data.image_size=-5"], "data.image_size must be in [0, 1024]"),
    (["data.image_size=100000"], "data.image_size must be in [0, 1024]"),
    (["scenario_file={tmp}/partition_iid.yaml"], "partition must be a section of keys, got 'iid'"),
    (["scenario_file={tmp}/strategy_5.yaml"], "strategy must be a strategy name or a section"),
    (["scenario_file={tmp}/model_list.yaml"], "model must be a section of keys, got [1, 2]"),
    (["scenario_file={tmp}/latin1.yaml"], "is not valid UTF-8 YAML"),
    (["run_id=../../x"], "run_id must be a plain folder name"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_zero"], "1.png is not a readable image"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_corrupt"], "1.png is not a readable image"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_truncated"], "1.png is not a readable image"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_large"], "is 4000 x 3000 pixels and data.image_size=0"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_over"],
     "is 12000 x 9000 pixels, more than fedcls decodes"),
    (["num_clients=1", "dataset=imagefolder", "data.image_folder={tmp}/img_huge", "data.image_size=28"],
     "(400000000 pixels) exceeds limit of 178956970 pixels, more than fedcls decodes"),
    (["faults.byzantine_site=10"], "faults.byzantine_site must be -1 or a site in [0, 9]"),
    (["faults.byzantine_site=1", "backend.executor=cohort", "backend.pre_aggregate=true"],
     "set backend.pre_aggregate=false"),
    (["scenario=../../etc/some.yaml"], "is not a scenario name: scenario= takes a name"),
    (["scenario={tmp}/partition_iid.yaml"], "give a file of your own as scenario_file=<path"),
    (["scenario_file={tmp}/missing.yaml"], "missing.yaml: no such file; give the path"),
    (["scenario=iid", "scenario_file={tmp}/latin1.yaml"], "give scenario=NAME or scenario_file=PATH, not both"),
    (["output_dir={tmp}/a_file"], "set output_dir to a writable folder"),
]


@pytest.fixture
def folders(tmp_path):
    from fedcls.config import compose
    from fedcls.outputs.results import to_yaml

    config = to_yaml(compose(["num_clients=3"]))
    for name in ("run_without_checkpoint", "run_with_corrupt_checkpoint"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config)
    (tmp_path / "run_with_corrupt_checkpoint" / "checkpoint.pt").write_bytes(b"\x00 half a file")
    (tmp_path / "empty").mkdir()
    for name, text in (("partition_iid", b"partition: iid\n"), ("strategy_5", b"strategy: 5\n"),
                       ("model_list", b"model: [1, 2]\n"), ("latin1", b"rounds: 3 # \xe9t\xe9\n")):
        (tmp_path / f"{name}.yaml").write_bytes(text)
    (tmp_path / "a_file").write_text("not a folder")
    _image_folders(tmp_path)
    return tmp_path


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, format="PNG")
    return buf.getvalue()


def _claims_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with an IHDR that says width x height (and a valid CRC): a decompression bomb's header."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def _image_folders(tmp_path) -> None:
    """ImageFolder trees whose second image is empty, corrupt or truncated; two whose images' headers
    claim 4000 x 3000, 12000 x 9000 (over fedcls's limit) or 20000 x 20000 (over PIL's)."""
    good = _png()
    for name, bad in (("img_zero", b""), ("img_corrupt", b"\x89PNG not really" * 10),
                      ("img_truncated", good[: len(good) // 2])):
        folder = tmp_path / name / "train" / "a"
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(good)
        (folder / "1.png").write_bytes(bad)
    for name, sizes in (("img_large", [(4000, 3000)] * 4), ("img_over", [(8, 8)] * 3 + [(12000, 9000)]),
                        ("img_huge", [(20000, 20000)] * 4)):
        folder = tmp_path / name / "train" / "a"
        folder.mkdir(parents=True)
        for i, size in enumerate(sizes):
            (folder / f"{i}.png").write_bytes(good if size == (8, 8) else _claims_size(good, *size))


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_bad_input_exits_2_with_a_message(args, words, folders, capsys, monkeypatch):
    monkeypatch.setattr(fedcls.engine.simulation, "simulate", lambda *a, **k: pytest.fail("a bad input started a run"))
    code = main([a.replace("{tmp}", str(folders)) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 2
