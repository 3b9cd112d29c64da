import pytest
import torch
from torch import nn

from fedcls.algorithms.models import MODELS, build_model
from fedcls.config import compose


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_models_follow_the_dataset_shape(name, shape, classes):
    model = build_model(compose([f"model={name}"]).model, shape, classes)
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, classes)
    assert model.features(x).shape == (2, model.feature_dim)


def test_simple_cnn_is_niid_bench_layout():
    model = build_model(compose([]).model, (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 16]
    assert [lin.out_features for lin in linears] == [120, 84, 10]


def test_resnet18_group_norm_option():
    group = build_model(compose(["model=resnet18", "model.norm=group"]).model, (3, 32, 32), 10)
    batch = build_model(compose(["model=resnet18"]).model, (3, 32, 32), 10)
    assert any(isinstance(m, nn.GroupNorm) for m in group.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in batch.modules())
