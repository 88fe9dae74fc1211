"""Two augmented views per image, drawn on the CPU (docs/method.md, "Views and geometry").

Spatial: horizontal flip (p=0.5) of the whole image, then RandomResizedCrop
(scale ``[crop_min, 1]``, ratio ``[3/4, 4/3]``), resized to ``img_size``; the two
views draw independently (different positions and scales).
Colour, view 1: ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2, blur p=1.0.
Colour, view 2: ColorJitter p=0.8, grayscale p=0.2, blur p=0.1, solarize p=0.2.
Gaussian blur sigma is uniform in [0.1, 2.0] in units of a 224-pixel image and
is scaled to ``img_size`` (*interpretation*: keeps the blur's relative strength
at small resolutions; at 224 it is the paper's value).

All randomness comes from an explicit ``torch.Generator`` so a sample's views
are a pure function of (seed, epoch, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

SCALE_RATIO = (3.0 / 4.0, 4.0 / 3.0)
BLUR_SIGMA = (0.1, 2.0)
REFERENCE_SIZE = 224


@dataclass(frozen=True)
class ColourRecipe:
    jitter_p: float
    gray_p: float
    blur_p: float
    solarize_p: float


VIEW1_COLOUR = ColourRecipe(jitter_p=0.8, gray_p=0.2, blur_p=1.0, solarize_p=0.0)
VIEW2_COLOUR = ColourRecipe(jitter_p=0.8, gray_p=0.2, blur_p=0.1, solarize_p=0.2)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def sample_crop(height: int, width: int, scale: tuple[float, float], gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(i, j, h, w)`` (torchvision's algorithm, explicit generator)."""
    area = height * width
    log_ratio = (math.log(SCALE_RATIO[0]), math.log(SCALE_RATIO[1]))
    for _ in range(10):
        target_area = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen).item())
            return i, j, h, w
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < SCALE_RATIO[0]:
        w, h = width, int(round(width / SCALE_RATIO[0]))
    elif in_ratio > SCALE_RATIO[1]:
        h, w = height, int(round(height * SCALE_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def spatial_view(image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """Flip the whole image (if ``flip``), then crop ``box`` and resize to ``size``.

    Args:
        image: ``[C, H, W]`` (uint8 or float).
    Returns:
        ``[C, size, size]``, same dtype.
    """
    if flip:
        image = TF.horizontal_flip(image)
    i, j, h, w = box
    return TF.resized_crop(image, i, j, h, w, [size, size], antialias=True)


def colour_view(image: torch.Tensor, recipe: ColourRecipe, gen: torch.Generator, img_size: int) -> torch.Tensor:
    """Apply a view's colour pipeline to a uint8 ``[3, S, S]`` image; returns uint8 ``[3, S, S]``."""
    # Hue rotation is the identity on achromatic (R=G=B) images, e.g. grey Fashion-MNIST: skip
    # the expensive RGB<->HSV round trip there (the random draws stay the same).
    achromatic = bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))
    if torch.rand((), generator=gen).item() < recipe.jitter_p:
        factors = {
            "brightness": _uniform(gen, 0.6, 1.4),
            "contrast": _uniform(gen, 0.6, 1.4),
            "saturation": _uniform(gen, 0.8, 1.2),
            "hue": _uniform(gen, -0.1, 0.1),
        }
        for name in [list(factors)[k] for k in torch.randperm(4, generator=gen).tolist()]:
            if name == "hue" and achromatic:
                continue
            image = getattr(TF, f"adjust_{name}")(image, factors[name])
    if torch.rand((), generator=gen).item() < recipe.gray_p:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if torch.rand((), generator=gen).item() < recipe.blur_p:
        sigma = _uniform(gen, *BLUR_SIGMA) * img_size / REFERENCE_SIZE
        kernel = max(3, 2 * math.ceil(3 * sigma) + 1)
        image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if torch.rand((), generator=gen).item() < recipe.solarize_p:
        image = TF.solarize(image, 128)
    return image


@dataclass
class ViewPair:
    view1: torch.Tensor  # uint8 [3, S, S]
    view2: torch.Tensor  # uint8 [3, S, S]
    box1: tuple[int, int, int, int]
    box2: tuple[int, int, int, int]
    flip1: bool
    flip2: bool
    width: int


def make_view_pair(image: torch.Tensor, img_size: int, gen: torch.Generator, crop_min: float = 0.08,
                   flip_prob: float = 0.5, different_views: bool = True, color_aug: bool = True) -> ViewPair:
    """Draw the two views of one image.

    Args:
        image: uint8 ``[3, H, W]``.
        different_views: False -> view 2 is an exact copy of view 1: same flip, crop and
            colours (ablation rows a-c; *interpretation*, docs/method.md).
        color_aug: False -> no colour augmentation on either view.
    """
    _, height, width = image.shape
    flip1 = bool(torch.rand((), generator=gen).item() < flip_prob)
    box1 = sample_crop(height, width, (crop_min, 1.0), gen)
    v1 = spatial_view(image, box1, flip1, img_size)
    if color_aug:
        v1 = colour_view(v1, VIEW1_COLOUR, gen, img_size)
    if not different_views:
        return ViewPair(v1, v1.clone(), box1, box1, flip1, flip1, width)
    flip2 = bool(torch.rand((), generator=gen).item() < flip_prob)
    box2 = sample_crop(height, width, (crop_min, 1.0), gen)
    v2 = spatial_view(image, box2, flip2, img_size)
    if color_aug:
        v2 = colour_view(v2, VIEW2_COLOUR, gen, img_size)
    return ViewPair(v1, v2, box1, box2, flip1, flip2, width)
