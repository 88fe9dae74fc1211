"""Robustness (counterpart of ImageNet-C): a trained classifier on corrupted test images.

Corruptions act on float images ``[B, 3, S, S]`` in [0, 1] at the model input
size (after the resize, before normalisation), five severities each, and are
deterministic: the random parts draw from a ``torch.Generator`` seeded by
``(seed, corruption, severity, batch start)``. Types (ImageNet-C's families):

- ``gaussian_noise`` (noise): ``x + N(0, sigma)``, sigma = 0.04, 0.08, 0.12, 0.18, 0.26.
- ``gaussian_blur`` (blur): Gaussian kernel, sigma = 0.5, 0.75, 1.0, 1.5, 2.0 pixels.
- ``contrast`` (digital): ``(x - mean) * c + mean``, c = 0.6, 0.45, 0.3, 0.2, 0.1.
- ``elastic`` (geometric): smoothed random displacement field, amplitude 0.5..2.5 px.
- ``affine`` (geometric): rotation +-(6..30) degrees and shift +-(0.03..0.15) of the side.
- ``occlusion`` (occlusion): a grey square covering 10..50% of the image area at a random place.

Reported per corruption: mean accuracy over the severities; overall: the mean
over corruptions ("mCA", mean corrupted accuracy) and the clean accuracy.
ImageNet-C's "1 - mCE" normalises errors by AlexNet's; there is no such
reference model here, so the column maps to mCA (unnormalised).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)
_NOISE = (0.04, 0.08, 0.12, 0.18, 0.26)
_BLUR = (0.5, 0.75, 1.0, 1.5, 2.0)
_CONTRAST = (0.6, 0.45, 0.3, 0.2, 0.1)
_ELASTIC = (0.5, 1.0, 1.5, 2.0, 2.5)
_ROTATE = (6.0, 12.0, 18.0, 24.0, 30.0)
_SHIFT = (0.03, 0.06, 0.09, 0.12, 0.15)
_OCCLUDE = (0.1, 0.2, 0.3, 0.4, 0.5)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gauss_kernel(sigma).to(x.device)
    c, r = x.shape[1], len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_noise(x, severity, gen):
    return x + _NOISE[severity - 1] * torch.randn(x.shape, generator=gen).to(x.device)


def gaussian_blur(x, severity, gen):
    return _blur(x, _BLUR[severity - 1])


def contrast(x, severity, gen):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _CONTRAST[severity - 1] + mean


def _identity_grid(b, s, device):
    theta = torch.eye(2, 3, device=device).unsqueeze(0).expand(b, -1, -1)
    return F.affine_grid(theta, (b, 1, s, s), align_corners=False)  # [B, S, S, 2] in [-1, 1]


def elastic(x, severity, gen):
    b, _, s, _ = x.shape
    disp = torch.randn(b, 2, s, s, generator=gen).to(x.device)
    disp = _blur(disp, sigma=max(1.0, s / 10))
    disp = disp / disp.flatten(1).std(dim=1).clamp(min=1e-6).view(b, 1, 1, 1)  # unit std per image
    disp = disp * _ELASTIC[severity - 1] * 2.0 / s  # pixels -> normalised coordinates
    grid = _identity_grid(b, s, x.device) + disp.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine(x, severity, gen):
    b = x.shape[0]
    sign = torch.randint(0, 2, (b, 3), generator=gen).float() * 2 - 1
    ang = sign[:, 0] * math.radians(_ROTATE[severity - 1])
    shift = sign[:, 1:] * _SHIFT[severity - 1] * 2.0  # fraction of the side -> normalised units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = ang.cos(), -ang.sin()
    theta[:, 1, 0], theta[:, 1, 1] = ang.sin(), ang.cos()
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), tuple(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def occlusion(x, severity, gen):
    b, _, s, _ = x.shape
    side = max(1, round(s * math.sqrt(_OCCLUDE[severity - 1])))
    top = torch.randint(0, s - side + 1, (b,), generator=gen)
    left = torch.randint(0, s - side + 1, (b,), generator=gen)
    rows = torch.arange(s).view(1, s, 1)
    cols = torch.arange(s).view(1, 1, s)
    m = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + side).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + side).view(b, 1, 1))
    )
    return torch.where(m.unsqueeze(1).to(x.device), torch.full_like(x, 0.5), x)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "elastic": elastic,
    "affine": affine,
    "occlusion": occlusion,
}


def corrupt(images01: torch.Tensor, name: str, severity: int, seed: int = 0, start: int = 0) -> torch.Tensor:
    """Corrupted copy of float ``[B, 3, S, S]`` images in [0, 1], clamped to [0, 1].

    The randomness is seeded by ``(seed, name, severity, start)``, ``start``
    being the batch's offset in its set, so a sweep with a fixed batch size is
    reproducible run to run.
    """
    if name not in CORRUPTIONS:
        import difflib

        close = difflib.get_close_matches(name, CORRUPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}{hint}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    key = zlib.crc32(f"{seed}/{name}/{severity}/{start}".encode())
    gen = torch.Generator().manual_seed(key)
    return CORRUPTIONS[name](images01, severity, gen).clamp(0.0, 1.0)


def summarize(acc: dict[str, dict[int, float]]) -> dict[str, float]:
    """``{corruption: mean over severities, ..., "mCA": mean over corruptions}`` from
    ``acc[corruption][severity]`` (percent)."""
    per = {name: sum(s.values()) / len(s) for name, s in acc.items()}
    per["mCA"] = sum(per.values()) / len(per)
    return per


@torch.no_grad()
def corrupted_accuracy(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images,
    name: str | None,
    severity: int = 1,
    seed: int = 0,
    batch_size: int = 512,
    device="cpu",
) -> float:
    """Top-1 (%) of ``predict`` (normalised ``[B, 3, S, S]`` -> long ``[B]``) on ``images`` (an
    :class:`~siamim.eval.imageset.ImageSet`) under corruption ``name`` at ``severity``
    (``name=None``: clean)."""
    correct = 0
    for start in range(0, len(images), batch_size):
        end = min(start + batch_size, len(images))
        x01 = images.images[start:end].to(device).float().div_(255.0)
        if name is not None:
            x01 = corrupt(x01, name, severity, seed, start)
        pred = predict(images.normalize(x01)).cpu()
        correct += int((pred == images.labels[start:end]).sum())
    return 100.0 * correct / len(images)
