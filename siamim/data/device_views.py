"""Batched two-view rendering on the training device (``data.views_on=device``).

The CPU side draws every random parameter exactly as the per-sample path does
(:func:`siamim.data.views.draw_view_params`, same seeded generators, so a batch
is still a pure function of (seed, step)) and hands over the uint8 source
images; this module renders a whole batch at once on whatever device the
batch lives on:

- flip + RandomResizedCrop: one ``grid_sample`` per view over per-sample boxes
  (bilinear at the output pixel centres, as torchvision's resize, clamped to the
  crop; when downscaling, ``ceil(source / size)`` points per output pixel and
  axis spread over its footprint are averaged, a box-filter antialias), then a
  per-sample horizontal flip;
- ColorJitter (brightness, contrast, saturation, hue in each sample's own
  random order), grayscale, Gaussian blur with a per-sample sigma (one fixed
  kernel width for the batch, each sample's taps beyond its own torchvision
  kernel size set to zero, so the result equals torchvision's blur), solarize,
  normalisation; all in float32 on ``[0, 1]`` images.

Shapes are fixed by the config (no data-dependent shapes), so the step stays
friendly to CUDA graphs. The geometry is computed from the same boxes and flips
by :func:`siamim.data.geometry.relative_geometry`, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.data.views import BLUR_SIGMA, NEUTRAL_FACTORS, REFERENCE_SIZE, blur_kernel_size

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


# --------------------------------------------------------------------------- spatial
def _axis_positions(start: torch.Tensor, length: torch.Tensor, size: int, sub: int) -> torch.Tensor:
    """Source pixel coordinates (pixel-centre units) sampled along one axis of each crop.

    Output pixel ``u`` covers ``[start + u*s, start + (u+1)*s)`` with ``s = length / size``. Upscaling
    (``s <= 1``): its centre, as torchvision's bilinear resize. Downscaling: ``sub`` points spread
    over that footprint, to be averaged (antialiasing). Clamped to the crop's first/last pixel, as
    torchvision resizes the crop tensor itself. ``[B]`` x2 -> ``[B, size * sub]``.
    """
    dev, dt = start.device, start.dtype
    u = torch.arange(size, device=dev, dtype=dt).repeat_interleave(sub)  # [size*sub]
    k = (torch.arange(sub, device=dev, dtype=dt) + 0.5) / sub - 0.5  # sub-sample offsets in (-0.5, 0.5)
    k = k.repeat(size)
    scale = (length / size).view(-1, 1)  # [B, 1]
    spread = (scale > 1).to(dt)  # only downscaling spreads the samples
    pos = start.view(-1, 1) + (u + 0.5 + k * spread) * scale - 0.5
    return torch.minimum(torch.maximum(pos, start.view(-1, 1)), (start + length - 1).view(-1, 1))


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, widths: torch.Tensor,
                     size: int) -> torch.Tensor:
    """Per-sample ``flip(image)[i:i+h, j:j+w]`` resized to ``size x size``: one batched ``grid_sample``.

    Args:
        images: float ``[B, C, H, W]`` (sources padded to a common size by edge replication).
        boxes: ``[B, 4]`` ``(i, j, h, w)`` in pixels of the flipped source image.
        flips: bool ``[B]``.
        widths: ``[B]`` true width ``W_b`` of each source (before padding).
    Returns:
        float ``[B, C, size, size]``.
    """
    _, _, height, width = images.shape
    sub = max(1, -(-max(height, width) // size))  # points per output pixel and axis when downscaling
    boxes = boxes.to(images.dtype)
    i, j, h, w = boxes.unbind(-1)
    # A crop of the flipped image is the flipped crop of the mirrored box in the original.
    left = torch.where(flips, widths.to(images.dtype) - j - w, j)
    ys = _axis_positions(i, h, size, sub)  # [B, size*sub]
    xs = _axis_positions(left, w, size, sub)
    gy = (ys + 0.5) / height * 2 - 1  # grid_sample's normalised coordinates (align_corners=False)
    gx = (xs + 0.5) / width * 2 - 1
    n = size * sub
    grid = torch.stack([gx[:, None, :].expand(-1, n, -1), gy[:, :, None].expand(-1, -1, n)], dim=-1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if sub > 1:
        out = F.avg_pool2d(out, sub)
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


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
    hue = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
           + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6.0)
    frac = h * 6.0 - sector
    sector = sector.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * frac)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - frac))).clamp(0.0, 1.0)
    table = torch.stack([torch.stack([v, q, p, p, t, v], 1), torch.stack([t, v, v, q, p, p], 1),
                         torch.stack([p, p, t, v, v, q], 1)], dim=1)  # [B, 3(rgb), 6(sector), S, S]
    pick = F.one_hot(sector, 6).permute(0, 3, 1, 2).unsqueeze(1).to(x.dtype)  # [B, 1, 6, S, S]
    return (table * pick).sum(dim=2)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + factor.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


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
        for op, fn in enumerate(JITTER_FNS):
            active = jitter & (order[:, slot] == op)
            # Samples whose slot holds another op get the neutral factor (an exact identity but for hue,
            # whose RGB->HSV->RGB round trip is exact to float rounding).
            x = fn(x, torch.where(active, factors[:, op], torch.full_like(factors[:, op], NEUTRAL_FACTORS[op])))
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
    out = {k: v for k, v in batch.items()
           if k not in ("image", "box1", "box2", "flip1", "flip2", "width", "colour1", "colour2")}
    images = batch["image"].float().div_(255.0)
    kernel = max_blur_kernel(img_size)
    mean = mean.to(images.device).view(1, 3, 1, 1)
    std = std.to(images.device).view(1, 3, 1, 1)
    views = []
    for v in ("1", "2"):
        x = crop_resize_flip(images, batch["box" + v], batch["flip" + v], batch["width"], img_size)
        if "colour" + v in batch:
            x = apply_colour_batch(x, batch["colour" + v], kernel)
        views.append((x - mean) / std)
    out["view1"], out["view2"] = views
    return out
