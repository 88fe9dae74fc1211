"""Shared small real Fashion-MNIST subsets and representations for the evaluation tests."""

from __future__ import annotations

import functools

import numpy as np
import torch

from siamim.config import load_config
from siamim.data.sources import build_source
from siamim.eval.imageset import ImageSet, load_image_set
from siamim.eval.subsets import limit_indices

# Small, fast encoder (same family as configs/tiny.yaml), at the 32x32 input the thresholds of
# these tests were calibrated on (real_set's default size).
SMALL_MODEL = [
    "data.img_size=32",
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=64",
    "model.decoder_heads=2",
]


def cfg(*overrides: str):
    return load_config("tiny", [*SMALL_MODEL, *overrides])


@functools.cache
def source(split: str):
    return build_source("fashion_mnist", None, split)


@functools.cache
def real_set(split: str, n: int, seed: int = 0, img_size: int = 32) -> ImageSet:
    """A class-balanced seeded subset of ``n`` real Fashion-MNIST images of ``split``."""
    src = source(split)
    return load_image_set(src, img_size, limit_indices(src.labels, n, seed))


def planted(labels: torch.Tensor, dim: int, signal: float, noise_seed: int = 0, num_classes: int = 10) -> torch.Tensor:
    """Features ``[..., dim]`` for long ``labels`` ``[...]``: Gaussian noise (seeded by ``noise_seed``)
    plus ``signal`` x a fixed random direction per class (``signal=0``: no class information at all)."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(12345))
    noise = torch.randn(*labels.shape, dim, generator=torch.Generator().manual_seed(noise_seed))
    return noise + signal * centres[labels]


def chance(num_classes: int = 10) -> float:
    return 100.0 / num_classes


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
