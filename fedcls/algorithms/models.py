"""Classifiers. Each model is ``features`` (to the penultimate representation) then ``head``
(a linear classifier), so hooks such as CORAL or MOON can reach the features.
Input shape and class count follow the dataset."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedcls.schema import ModelConfig


class Classifier(nn.Module):
    """features -> head; ``forward`` returns logits."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _flat_dim(body: nn.Module, shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return body(torch.zeros(1, *shape)).flatten(1).shape[1]


def mlp(shape: tuple[int, int, int], num_classes: int, model: ModelConfig) -> Classifier:
    """Two hidden layers of 200 units (McMahan et al. 2017's MNIST 2NN)."""
    dim = shape[0] * shape[1] * shape[2]
    body = nn.Sequential(nn.Flatten(), nn.Linear(dim, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU())
    return Classifier(body, 200, num_classes)


def simple_cnn(shape: tuple[int, int, int], num_classes: int, model: ModelConfig) -> Classifier:
    """NIID-Bench's simple-CNN: conv6(5x5)-pool-conv16(5x5)-pool-fc120-fc84-fc(classes)."""
    conv = nn.Sequential(
        nn.Conv2d(shape[0], 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    flat = _flat_dim(conv, shape)
    body = nn.Sequential(conv, nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return Classifier(body, 84, num_classes)


def simple_cnn_bn(shape: tuple[int, int, int], num_classes: int, model: ModelConfig) -> Classifier:
    """simple_cnn with BatchNorm after each convolution (for FedBN)."""
    conv = nn.Sequential(
        nn.Conv2d(shape[0], 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    flat = _flat_dim(conv.eval(), shape)
    body = nn.Sequential(conv.train(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return Classifier(body, 84, num_classes)


def resnet18(shape: tuple[int, int, int], num_classes: int, model: ModelConfig) -> Classifier:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool for small images;
    ``model.norm=group`` swaps BatchNorm for GroupNorm (better under Non-IID, Hsieh et al. 2020)."""
    from torchvision.models import resnet18 as tv_resnet18

    def group_norm(channels: int) -> nn.Module:
        return nn.GroupNorm(max(channels // 32, 1) * 2, channels)

    norm = group_norm if model.norm == "group" else nn.BatchNorm2d
    net = tv_resnet18(weights=None, norm_layer=norm)
    net.conv1 = nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return Classifier(net, 512, num_classes)


class _ViTFeatures(nn.Module):
    """torchvision VisionTransformer up to the class token (its heads removed)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit._process_input(x)
        cls = self.vit.class_token.expand(x.shape[0], -1, -1)
        return self.vit.encoder(torch.cat([cls, tokens], dim=1))[:, 0]


def vit_tiny(shape: tuple[int, int, int], num_classes: int, model: ModelConfig) -> Classifier:
    """A small ViT (torchvision's VisionTransformer): 4x4 patches, 6 layers, width 192, 3 heads
    (DeiT-Tiny's width and heads at half its depth, for 28-32 px images)."""
    from torchvision.models.vision_transformer import VisionTransformer

    size = shape[1]
    patch = 4 if size % 4 == 0 else next(p for p in (2, 1) if size % p == 0)
    vit = VisionTransformer(image_size=size, patch_size=patch, num_layers=6, num_heads=3,
                            hidden_dim=192, mlp_dim=768, num_classes=num_classes)
    vit.conv_proj = nn.Conv2d(shape[0], 192, patch, patch)
    vit.heads = nn.Identity()
    return Classifier(_ViTFeatures(vit), 192, num_classes)


MODELS: dict[str, Callable[[tuple[int, int, int], int, ModelConfig], Classifier]] = {
    "mlp": mlp, "simple_cnn": simple_cnn, "simple_cnn_bn": simple_cnn_bn, "resnet18": resnet18,
    "vit_tiny": vit_tiny}
NORMS = ("batch", "group")
BATCHNORM_MODELS = "model=simple_cnn_bn, or model=resnet18 with model.norm=batch"


def has_batchnorm(model_cfg: ModelConfig) -> bool:
    """Whether the configured model has BatchNorm layers (FedBN needs them; integer running
    counters some strategies cannot average)."""
    return model_cfg.name == "simple_cnn_bn" or (model_cfg.name == "resnet18" and model_cfg.norm == "batch")


def build_model(model: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> Classifier:
    """The configured model for inputs of `shape` and `num_classes` classes."""
    return MODELS[model.name](shape, num_classes, model)
