"""Two augmented views per image, drawn on the CPU (docs/method.md, "Views and geometry").

Spatial: horizontal flip (p=0.5) of the whole image, then RandomResizedCrop
(scale ``[crop_min, 1]``, ratio ``[3/4, 4/3]``), resized bicubically to ``img_size``; the two
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


BICUBIC = TF.InterpolationMode.BICUBIC  # the release resizes crops bicubically (PIL's filter)


def spatial_view(image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """Flip the whole image (if ``flip``), then crop ``box`` and resize to ``size`` (antialiased bicubic).

    A uint8 image stays uint8 (rounded and clamped); a float image may overshoot ``[0, 1]`` slightly.

    Args:
        image: ``[C, H, W]`` (uint8 or float).
    Returns:
        ``[C, size, size]``, same dtype.
    """
    if flip:
        image = TF.horizontal_flip(image)
    i, j, h, w = box
    return TF.resized_crop(image, i, j, h, w, [size, size], interpolation=BICUBIC, antialias=True)


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
JITTER_RANGES = ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))  # ColorJitter(0.4, 0.4, 0.2, 0.1)
NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class ColourParams:
    """The random draws of one view's colour pipeline (applied in this order: jitter, gray, blur, solarize)."""

    jitter: bool
    factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    order: tuple[int, int, int, int]  # indices into JITTER_OPS, applied left to right
    gray: bool
    blur_sigma: float  # in pixels of the view; 0.0 = no blur
    solarize: bool

    def as_tensor(self) -> torch.Tensor:
        """float32 ``[12]``: ``jitter, factors[4], order[4], gray, blur_sigma, solarize``."""
        return torch.tensor(
            [
                float(self.jitter),
                *self.factors,
                *map(float, self.order),
                float(self.gray),
                self.blur_sigma,
                float(self.solarize),
            ],
            dtype=torch.float32,
        )


def draw_colour(recipe: ColourRecipe, gen: torch.Generator, img_size: int) -> ColourParams:
    """Draw a view's colour parameters from ``gen`` (the image is not needed)."""
    jitter = torch.rand((), generator=gen).item() < recipe.jitter_p
    factors, order = NEUTRAL_FACTORS, (0, 1, 2, 3)
    if jitter:
        factors = tuple(_uniform(gen, lo, hi) for lo, hi in JITTER_RANGES)
        order = tuple(torch.randperm(4, generator=gen).tolist())
    gray = torch.rand((), generator=gen).item() < recipe.gray_p
    sigma = 0.0
    if torch.rand((), generator=gen).item() < recipe.blur_p:
        sigma = _uniform(gen, *BLUR_SIGMA) * img_size / REFERENCE_SIZE
    solarize = torch.rand((), generator=gen).item() < recipe.solarize_p
    return ColourParams(jitter, factors, order, gray, sigma, solarize)


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size covering +-3 sigma (at least 3)."""
    return max(3, 2 * math.ceil(3 * sigma) + 1)


def apply_colour(image: torch.Tensor, params: ColourParams) -> torch.Tensor:
    """Apply drawn colour parameters to one image ``[3, S, S]`` (uint8 or float in [0, 1]), same dtype back."""
    # Hue rotation is the identity on achromatic (R=G=B) images, e.g. grey Fashion-MNIST: skip
    # the expensive RGB<->HSV round trip there.
    achromatic = bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))
    if params.jitter:
        for k in params.order:
            if JITTER_OPS[k] == "hue" and achromatic:
                continue
            image = getattr(TF, f"adjust_{JITTER_OPS[k]}")(image, params.factors[k])
    if params.gray:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if params.blur_sigma > 0:
        kernel = blur_kernel_size(params.blur_sigma)
        image = TF.gaussian_blur(image, [kernel, kernel], [params.blur_sigma, params.blur_sigma])
    if params.solarize:
        image = TF.solarize(image, 128 if image.dtype == torch.uint8 else 128 / 255)
    return image


def colour_view(image: torch.Tensor, recipe: ColourRecipe, gen: torch.Generator, img_size: int) -> torch.Tensor:
    """Apply a view's colour pipeline to a uint8 ``[3, S, S]`` image; returns uint8 ``[3, S, S]``."""
    return apply_colour(image, draw_colour(recipe, gen, img_size))


@dataclass(frozen=True)
class ViewParams:
    """Every random draw of a view pair: crops and flips (in pixels of the source image) and colours."""

    box1: tuple[int, int, int, int]
    box2: tuple[int, int, int, int]
    flip1: bool
    flip2: bool
    colour1: ColourParams | None  # None: no colour augmentation
    colour2: ColourParams | None
    same_view: bool  # view 2 is an exact copy of view 1


def draw_view_params(
    height: int,
    width: int,
    img_size: int,
    gen: torch.Generator,
    crop_min: float = 0.08,
    flip_prob: float = 0.5,
    different_views: bool = True,
    color_aug: bool = True,
) -> ViewParams:
    """Draw a view pair's parameters for an ``height x width`` source (order: view 1, then view 2).

    ``different_views=False``: view 2 is an exact copy of view 1 (ablation rows a-c; docs/method.md).
    ``color_aug=False``: no colour operation on either view.
    """
    flip1 = bool(torch.rand((), generator=gen).item() < flip_prob)
    box1 = sample_crop(height, width, (crop_min, 1.0), gen)
    colour1 = draw_colour(VIEW1_COLOUR, gen, img_size) if color_aug else None
    if not different_views:
        return ViewParams(box1, box1, flip1, flip1, colour1, colour1, same_view=True)
    flip2 = bool(torch.rand((), generator=gen).item() < flip_prob)
    box2 = sample_crop(height, width, (crop_min, 1.0), gen)
    colour2 = draw_colour(VIEW2_COLOUR, gen, img_size) if color_aug else None
    return ViewParams(box1, box2, flip1, flip2, colour1, colour2, same_view=False)


@dataclass
class ViewPair:
    view1: torch.Tensor  # uint8 [3, S, S]
    view2: torch.Tensor  # uint8 [3, S, S]
    box1: tuple[int, int, int, int]
    box2: tuple[int, int, int, int]
    flip1: bool
    flip2: bool
    width: int


def render_view_pair(image: torch.Tensor, params: ViewParams, img_size: int) -> ViewPair:
    """The CPU path: render drawn parameters on one uint8 ``[3, H, W]`` image."""
    v1 = spatial_view(image, params.box1, params.flip1, img_size)
    if params.colour1 is not None:
        v1 = apply_colour(v1, params.colour1)
    if params.same_view:
        v2 = v1.clone()
    else:
        v2 = spatial_view(image, params.box2, params.flip2, img_size)
        if params.colour2 is not None:
            v2 = apply_colour(v2, params.colour2)
    return ViewPair(v1, v2, params.box1, params.box2, params.flip1, params.flip2, image.shape[-1])


def make_view_pair(image: torch.Tensor, img_size: int, gen: torch.Generator, **options) -> ViewPair:
    """Draw and render the two views of one uint8 ``[3, H, W]`` image.

    ``options``: :func:`draw_view_params`'s keywords (``crop_min``, ``flip_prob``, ``different_views``, ``color_aug``).
    """
    _, height, width = image.shape
    return render_view_pair(image, draw_view_params(height, width, img_size, gen, **options), img_size)
