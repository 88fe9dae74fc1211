"""Batched two-view rendering on the training device (``data.views_on=device``).

The CPU side draws every random parameter exactly as the per-sample path does
(:func:`siamim.data.views.draw_view_params`, same seeded generators, so a batch
is still a pure function of (seed, step)) and hands over the uint8 source
images; this module renders a whole batch at once on whatever device the
batch lives on:

- flip + RandomResizedCrop: two batched matmuls per view with per-sample
  resampling matrices holding torchvision's antialiased bicubic weights (so the
  crops equal the CPU path's, which resizes bicubically as the release does),
  the flip folded into the column matrix, then a clamp to ``[0, 1]``;
- ColorJitter (brightness, contrast, saturation, hue in each sample's own
  random order; hue only on the samples whose slot holds it, which costs a
  host sync per slot), grayscale, Gaussian blur with a per-sample sigma (one fixed
  kernel width for the batch, each sample's taps beyond its own torchvision
  kernel size set to zero, so the result equals torchvision's blur), solarize,
  normalisation; all in float32 on ``[0, 1]`` images.

The geometry is computed from the same boxes and flips
by :func:`siamim.data.geometry.relative_geometry`, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.data.views import BLUR_SIGMA, REFERENCE_SIZE, blur_kernel_size

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


# --------------------------------------------------------------------------- spatial
BICUBIC_A = -0.5  # the cubic convolution coefficient of PIL's and torchvision's antialiased bicubic


def bicubic_filter(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.5), support ``|x| < 2``."""
    a, x = BICUBIC_A, x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, size: int) -> torch.Tensor:
    """Per-sample resampling matrices of one axis: crop ``[start, start + length)`` resized to ``size``.

    torchvision's antialiased bicubic filter (``InterpolationMode.BICUBIC, antialias=True``, PIL's
    filter) as weights: output pixel ``u`` has centre ``c = s (u + 0.5)`` in crop pixels,
    ``s = length / size``; crop pixel ``k`` weighs ``bicubic((k + 0.5 - c) / max(s, 1))``, normalised
    over the crop (so upscaling is plain bicubic clamped at the crop's edges, downscaling a cubic
    filter stretched by the scale).

    Args:
        start, length: ``[B]`` crop offset and length in source pixels.
    Returns:
        float ``[B, size, in_size]``, zero outside the crop.
    """
    dt = torch.float32
    start, length = start.to(dt).view(-1, 1, 1), length.to(dt).view(-1, 1, 1)
    scale = length / size  # [B, 1, 1]
    centre = scale * (torch.arange(size, device=start.device, dtype=dt).view(1, -1, 1) + 0.5)  # [B, S, 1]
    rel = torch.arange(in_size, device=start.device, dtype=dt).view(1, 1, -1) - start  # [B, 1, in]
    inside = (rel >= 0) & (rel < length)
    weight = bicubic_filter((rel + 0.5 - centre) / scale.clamp(min=1.0)) * inside  # [B, S, in]
    return weight / weight.sum(dim=-1, keepdim=True)


def crop_resize_flip(
    images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, widths: torch.Tensor, size: int
) -> torch.Tensor:
    """Per-sample ``flip(image)[i:i+h, j:j+w]`` resized to ``size x size``: two batched matmuls.

    The resize is separable, so each view is ``R_rows @ image @ R_cols^T`` with the per-sample
    matrices of :func:`resize_weights` (torchvision's antialiased bicubic weights); the flip
    reverses the rows of ``R_cols``. Bicubic overshoots: the result is not clamped here
    (:func:`render_views` clamps to ``[0, 1]``, as the uint8 CPU path does).

    Args:
        images: float ``[B, C, H, W]`` (sources padded to a common size; padding is never read).
        boxes: ``[B, 4]`` ``(i, j, h, w)`` in pixels of the flipped source image.
        flips: bool ``[B]``.
        widths: ``[B]`` true width ``W_b`` of each source (before padding).
    Returns:
        float ``[B, C, size, size]``.
    """
    _, _, height, width = images.shape
    i, j, h, w = boxes.unbind(-1)
    # A crop of the flipped image is the flipped crop of the mirrored box in the original.
    left = torch.where(flips, widths.to(boxes.dtype) - j - w, j)
    rows = resize_weights(i, h, height, size).to(images.dtype)  # [B, S, H]
    cols = resize_weights(left, w, width, size).to(images.dtype)  # [B, S, W]
    cols = torch.where(flips.view(-1, 1, 1), cols.flip(1), cols)
    return rows.unsqueeze(1) @ images @ cols.transpose(1, 2).unsqueeze(1)  # [B, C, S, S]


# --------------------------------------------------------------------------- colour ops on [B, 3, S, S] in [0, 1]
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, S, S] -> [B, 1, S, S]`` luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    flat = maxc == minc
    ones = torch.ones_like(maxc)
    chroma = maxc - minc
    sat = chroma / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hue = (
        (maxc == r) * (bc - gc)
        + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
        + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    )
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Closed form: channel ``n`` (r, g, b = 5, 3, 1) is ``v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h6, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + factor.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable blur with a per-sample sigma (0 = none), reflect padding, as torchvision's per image.

    Args:
        x: ``[B, C, S, S]``; sigma: ``[B]``; kernel: odd common kernel width (>= every sample's own).
    """
    b, c, s, _ = x.shape
    half = kernel // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)  # [K]
    own_half = torch.clamp(torch.ceil(3.0 * sigma), min=1.0)  # torchvision's size: max(3, 2*ceil(3 sigma)+1)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    weights = torch.exp(-0.5 * (offsets / safe.view(-1, 1)) ** 2)  # [B, K]
    weights = weights * (offsets.abs() <= own_half.view(-1, 1))
    delta = (offsets == 0).to(x.dtype).expand(b, -1)
    weights = torch.where((sigma > 0).view(-1, 1), weights, delta)
    weights = weights / weights.sum(dim=1, keepdim=True)
    weights = weights.repeat_interleave(c, dim=0)  # [B*C, K]
    y = F.pad(x.reshape(1, b * c, s, s), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, weights.view(b * c, 1, kernel, 1), groups=b * c)
    y = F.conv2d(y, weights.view(b * c, 1, 1, kernel), groups=b * c)
    return y.view(b, c, s, s)


def apply_colour_batch(x: torch.Tensor, params: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each sample's colour pipeline, batched.

    Jitter: in each of the four order slots every sample gets one blend
    ``f x + (1 - f) other`` (brightness: ``other = 0``; contrast: the mean luma;
    saturation: the pixel's luma; ``f = 1`` for samples whose slot holds hue or
    that draw no jitter), and hue rotation runs only on the samples whose slot holds it.

    Args:
        x: float ``[B, 3, S, S]`` in [0, 1].
        params: ``[B, 12]`` rows of :meth:`siamim.data.views.ColourParams.as_tensor`.
        kernel: blur kernel width for the batch (:func:`max_blur_kernel`).
    Returns:
        float ``[B, 3, S, S]`` in [0, 1].
    """
    params = params.to(x.device, x.dtype)
    jitter = params[:, 0] > 0.5
    factors, order = params[:, 1:5], params[:, 5:9].round().long()
    for slot in range(4):
        op = torch.where(jitter, order[:, slot], torch.full_like(order[:, slot], -1))  # -1: nothing
        luma = grayscale(x)  # [B, 1, S, S]
        other = torch.where((op == 1).view(-1, 1, 1, 1), luma.mean(dim=(-2, -1), keepdim=True), luma)
        other = torch.where((op == 0).view(-1, 1, 1, 1), torch.zeros_like(luma), other)
        factor = factors.gather(1, op.clamp(0, 2).view(-1, 1)).squeeze(1)
        x = _blend(x, other, torch.where((op >= 0) & (op <= 2), factor, torch.ones_like(factor)))
        hue_rows = (op == 3).nonzero().squeeze(1)
        if len(hue_rows):
            x = x.index_copy(0, hue_rows, adjust_hue(x[hue_rows], factors[hue_rows, 3]))
    x = torch.where((params[:, 9] > 0.5).view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    x = gaussian_blur(x, params[:, 10], kernel)
    return torch.where((params[:, 11] > 0.5).view(-1, 1, 1, 1) & (x >= 128 / 255), 1.0 - x, x)


def max_blur_kernel(img_size: int) -> int:
    """The widest blur kernel a view of ``img_size`` can draw (a fixed shape per config)."""
    return blur_kernel_size(BLUR_SIGMA[1] * img_size / REFERENCE_SIZE)


def render_views(batch: dict, img_size: int, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Replace a :class:`siamim.data.pipeline.DeviceCollate` batch's raw images by the two normalised views.

    Consumes ``image`` (uint8 ``[B, 3, H, W]``), ``box1``/``box2``, ``flip1``/``flip2``, ``width``, and
    ``colour1``/``colour2`` (``[B, 12]``, present when colour augmentation is on); adds ``view1``/``view2``
    float ``[B, 3, S, S]``. Works on any device; everything stays on the batch's device.
    """
    out = {
        k: v
        for k, v in batch.items()
        if k not in ("image", "box1", "box2", "flip1", "flip2", "width", "colour1", "colour2")
    }
    images = batch["image"].float().div_(255.0)
    kernel = max_blur_kernel(img_size)
    mean = mean.to(images.device).view(1, 3, 1, 1)
    std = std.to(images.device).view(1, 3, 1, 1)
    views = []
    for v in ("1", "2"):
        x = crop_resize_flip(images, batch["box" + v], batch["flip" + v], batch["width"], img_size).clamp_(0.0, 1.0)
        if "colour" + v in batch:
            x = apply_colour_batch(x, batch["colour" + v], kernel)
        views.append((x - mean) / std)
    out["view1"], out["view2"] = views
    return out
