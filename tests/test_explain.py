"""fedcls.explain: Grad-CAM (the grad-cam package) of a 1-round run's global model, per site, for
each model kind with convolutions or patches."""

import numpy as np
import pytest

from fedcls.config import compose
from strategy_helpers import identity

SMALL = ["dataset=synthetic", "data.synthetic.num_samples=240", "num_clients=3", "local_epochs=1", "rounds=1",
         "checkpoint_every=0", "tracking.tensorboard=false"]


def one_round_run(tmp_path, monkeypatch, *args):
    """A completed 1-round run folder with its model.pt, trained in-process."""
    from fedcls.apps.cohort.worker import CohortWorker
    from fedcls.apps.federation import run_federation
    from fedcls.data.federated import federated_data
    from fedcls.engine.cohort_grid import CohortGrid
    from fedcls.outputs.results import Recorder

    identity(monkeypatch)
    cfg = compose([*SMALL, *args])
    recorder = Recorder(tmp_path / "run", cfg, echo=lambda line: None)
    arrays = run_federation(CohortGrid(cfg.num_clients, [CohortWorker()], echo=lambda line: None), cfg,
                            federated_data(cfg), recorder)
    recorder.finish("completed", state_dict=arrays.to_torch_state_dict())
    return tmp_path / "run"


@pytest.mark.parametrize("model", ["simple_cnn", "resnet18", "vit_tiny"])
def test_gradcam_heatmaps_of_each_site_vary_over_the_image(model, tmp_path, monkeypatch, capsys):
    from fedcls.explain import main

    run = one_round_run(tmp_path, monkeypatch, f"model={model}", "domain.targets=[2]")
    assert main([str(run), "--images", "3"]) == 0
    assert (run / "explain" / "gradcam.png").stat().st_size > 0 and (run / "explain" / "gradcam.pdf").exists()
    saved = np.load(run / "explain" / "heatmaps.npz")
    for site in (0, 1, 2):  # site 2: a held-out target site, explained too
        maps = saved[f"site_{site}"]
        assert maps.shape == (3, 28, 28) and 0 <= maps.min() and maps.max() <= 1
        assert all(m.std() > 0.01 for m in maps), f"site {site}: a heatmap is flat"
        assert len(set(saved[f"labels_{site}"])) > 1  # the site's classes in turn, not 3 of its first class
    assert "explain/gradcam.png" in capsys.readouterr().out


def test_explain_names_the_fix_for_a_run_without_a_model_or_without_convolutions(tmp_path, monkeypatch, capsys):
    from fedcls.explain import main

    run = one_round_run(tmp_path, monkeypatch, "model=mlp")
    assert main([str(run)]) == 2
    assert "model=mlp has neither" in capsys.readouterr().err
    (run / "model.pt").unlink()
    assert main([str(run)]) == 2
    assert "rerun it with save_model=true" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no run folder there" in capsys.readouterr().err
