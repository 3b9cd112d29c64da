"""Image domains: seeded transforms that mimic devices (scanners, cameras) or a changing world.

A domain is a short spec string, ``name`` or ``name:value``:

    identity            no change
    rotate:60           rotate by 60 degrees (torchvision's rotate, bilinear)
    noise:0.3           add Gaussian noise of std 0.3 (on [0, 1] pixels), clipped
    contrast:0.4        scale contrast around mid-grey by 0.4, clipped
    gamma:2.0           pixel ** 2.0 (darker scanner response)
    blur:1.5            Gaussian blur with sigma 1.5 (torchvision's gaussian_blur)
    invert              1 - pixel
    scale:0.7           zoom by 0.7 around the centre (torchvision's affine)
    color:0.3           per-channel gains drawn in [0.7, 1.3] (a camera's colour cast; on one
                        channel, a brightness change), clipped

Domains chain with '+': ``contrast:0.5+noise:0.1`` applies contrast, then noise.

Transforms act on float images in [0, 1], shape (N, C, H, W); ``apply_domain`` takes a seed so
noise is the same in every run. Written by hand only where torchvision has no tensor op for it
(noise, contrast around mid-grey, gamma, inversion are one line each).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedcls.errors import ConfigError, unknown_name
from fedcls.schema import DomainConfig


def _tv():
    """torchvision's tensor transforms, imported on first use (the import costs ~2 s in every
    Ray actor and every deployed ClientApp process, most of which never transform an image)."""
    from torchvision.transforms.v2 import functional

    return functional

def _rotate(x, v, gen):
    TF = _tv()
    return TF.rotate(x, float(v), interpolation=TF.InterpolationMode.BILINEAR)


def _noise(x, v, gen):
    return (x + float(v) * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _contrast(x, v, gen):
    return ((x - 0.5) * float(v) + 0.5).clamp(0, 1)


def _gamma(x, v, gen):
    return x.clamp(0, 1) ** float(v)


def _blur(x, v, gen):
    sigma = float(v)
    size = max(3, 2 * math.ceil(3 * sigma) + 1)
    return _tv().gaussian_blur(x, [size, size], [sigma, sigma])


def _invert(x, v, gen):
    return 1.0 - x


def _scale(x, v, gen):
    return _tv().affine(x, angle=0.0, translate=[0, 0], scale=float(v), shear=[0.0, 0.0])


def _color(x, v, gen):
    gains = 1.0 + float(v) * (2 * torch.rand(x.shape[1], generator=gen) - 1)
    return (x * gains.view(1, -1, 1, 1)).clamp(0, 1)


TRANSFORMS = {  # name -> (transform, needs a value)
    "identity": (lambda x, v, gen: x, False), "rotate": (_rotate, True), "noise": (_noise, True),
    "contrast": (_contrast, True), "gamma": (_gamma, True), "blur": (_blur, True),
    "invert": (_invert, False), "scale": (_scale, True), "color": (_color, True),
}


def parse_domain(spec: str, key: str = "domain") -> tuple[str, float | None]:
    """'rotate:60' -> ('rotate', 60.0); a clear ConfigError for unknown names or bad values."""
    name, _, value = str(spec).partition(":")
    if name not in TRANSFORMS:
        raise unknown_name("domain", name, list(TRANSFORMS), key=key)
    needs_value = TRANSFORMS[name][1]
    if needs_value and not value:
        raise ConfigError(f"{key}: domain '{name}' needs a value, e.g. '{name}:0.5'")
    try:
        number = float(value) if value else None
    except ValueError:
        raise ConfigError(f"{key}: '{spec}' has a value that is not a number") from None
    if number is not None and name in ("noise", "blur", "color") and number < 0:
        raise ConfigError(f"{key}: '{spec}' needs a value >= 0")
    if number is not None and name in ("contrast", "gamma", "scale") and number <= 0:
        raise ConfigError(f"{key}: '{spec}' needs a value > 0")
    return name, number


def check_domain(spec: str, key: str = "domain") -> None:
    """ConfigError unless every part of a (possibly '+'-chained) domain spec is valid."""
    for part in str(spec).split("+"):
        parse_domain(part, key)


def apply_domain(x01: torch.Tensor, spec: str, seed: int) -> torch.Tensor:
    """Images in [0, 1] seen through domain `spec` (random parts drawn from `seed`)."""
    gen = torch.Generator().manual_seed(int(seed))
    x = x01.float()
    for part in str(spec).split("+"):
        name, value = parse_domain(part)
        x = TRANSFORMS[name][0](x, value, gen)
    return x


def domain_view(ds, x: torch.Tensor, spec: str, seed_parts: list[int]) -> torch.Tensor:
    """Stored images of dataset `ds` through domain `spec`, in stored units (random parts drawn
    from a seed derived from `seed_parts`)."""
    if spec == "identity":
        return x
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1)[0])
    return apply_domain(x.float() / ds.scale, spec, seed) * ds.scale


def normalized_view(ds, x: torch.Tensor, spec: str, seed_parts: list[int]) -> torch.Tensor:
    """Stored images of dataset `ds` through domain `spec`, normalised with `ds`'s statistics."""
    return ds.normalize(domain_view(ds, x, spec, seed_parts))


def site_domain(domain: DomainConfig, site: int) -> str:
    """Site `site`'s device domain (identity when domain.sites is empty)."""
    specs = domain.sites
    return str(specs[site % len(specs)]) if specs else "identity"
