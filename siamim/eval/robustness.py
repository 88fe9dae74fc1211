"""Robustness (counterpart of ImageNet-C): a trained classifier on corrupted test images.

Corruptions act on float images ``[B, 3, S, S]`` in [0, 1] at the model input
size (after the resize, before normalisation), five severities each, through
torchvision's ``transforms.v2.functional`` ops with parameters we draw: the random
parts come from a ``torch.Generator`` seeded by ``(seed, corruption, severity, batch
start)``, so a sweep is the same run to run. Types (ImageNet-C's families; the names
are the keys of :data:`CORRUPTIONS`):

- ``gaussian_noise`` (noise): ``x + N(0, sigma)``, sigma = 0.04, 0.08, 0.12, 0.18, 0.26.
- ``gaussian_blur`` (blur): ``gaussian_blur``, sigma = 0.5, 0.75, 1.0, 1.5, 2.0 pixels (kernel 2*ceil(3 sigma)+1).
- ``contrast`` (digital): ``(x - mean) * c + mean``, c = 0.6, 0.45, 0.3, 0.2, 0.1.
- ``elastic`` (geometric): ``elastic`` with a per-image Gaussian-smoothed random displacement
  field of unit std scaled to 0.5..2.5 px.
- ``affine`` (geometric): ``affine``, rotation +-(6..30) degrees and shift +-(0.03..0.15) of the
  side, the signs drawn per image.
- ``occlusion`` (occlusion): ``erase`` of a grey square covering 10..50% of the image area at a
  random place per image.

Reported per corruption: mean accuracy over the severities; overall: the mean
over corruptions ("mCA", mean corrupted accuracy) and the clean accuracy.
ImageNet-C's "1 - mCE" normalises errors by AlexNet's; there is no such
reference model here, so the column maps to mCA (unnormalised).
"""

from __future__ import annotations

import difflib
import math
import zlib
from collections.abc import Callable

import torch
from torchvision.transforms.v2 import functional as TF

SEVERITIES = (1, 2, 3, 4, 5)
_NOISE = (0.04, 0.08, 0.12, 0.18, 0.26)
_BLUR = (0.5, 0.75, 1.0, 1.5, 2.0)
_CONTRAST = (0.6, 0.45, 0.3, 0.2, 0.1)
_ELASTIC = (0.5, 1.0, 1.5, 2.0, 2.5)
_ROTATE = (6.0, 12.0, 18.0, 24.0, 30.0)
_SHIFT = (0.03, 0.06, 0.09, 0.12, 0.15)
_OCCLUDE = (0.1, 0.2, 0.3, 0.4, 0.5)


def _kernel(sigma: float) -> list[int]:
    k = 2 * max(1, math.ceil(3 * sigma)) + 1
    return [k, k]


def gaussian_noise(x, severity, gen):
    return x + _NOISE[severity - 1] * torch.randn(x.shape, generator=gen).to(x.device)


def gaussian_blur(x, severity, gen):
    sigma = _BLUR[severity - 1]
    return TF.gaussian_blur(x, _kernel(sigma), [sigma, sigma])


def contrast(x, severity, gen):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _CONTRAST[severity - 1] + mean


def elastic(x, severity, gen):
    b, _, s, _ = x.shape
    sigma = max(1.0, s / 10)
    field = TF.gaussian_blur(torch.randn(b, 2, s, s, generator=gen), _kernel(sigma), [sigma, sigma])
    field = field / field.flatten(1).std(dim=1).clamp(min=1e-6).view(b, 1, 1, 1)  # unit std per image
    field = (field * _ELASTIC[severity - 1] * 2.0 / s).permute(0, 2, 3, 1)  # pixels -> normalised [B, S, S, 2]
    return torch.cat([TF.elastic(x[i : i + 1], field[i : i + 1].to(x.device)) for i in range(b)])


def affine(x, severity, gen):
    b, _, s, _ = x.shape
    sign = torch.randint(0, 2, (b, 3), generator=gen) * 2 - 1  # per image: rotation, x and y shift
    out = torch.empty_like(x)
    for combo in sign.unique(dim=0):  # at most 8 sign patterns: one batched op each
        rows = (sign == combo).all(dim=1).nonzero().view(-1).to(x.device)
        angle = float(combo[0]) * _ROTATE[severity - 1]
        shift = [float(c) * _SHIFT[severity - 1] * s for c in combo[1:]]
        out[rows] = TF.affine(
            x[rows],
            angle=angle,
            translate=shift,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
    return out


def occlusion(x, severity, gen):
    b, _, s, _ = x.shape
    side = max(1, round(s * math.sqrt(_OCCLUDE[severity - 1])))
    top = torch.randint(0, s - side + 1, (b,), generator=gen).tolist()
    left = torch.randint(0, s - side + 1, (b,), generator=gen).tolist()
    grey = torch.tensor(0.5, device=x.device)
    return torch.cat([TF.erase(x[i : i + 1], top[i], left[i], side, side, grey) for i in range(b)])


# name -> corruption(x [B, 3, S, S] in [0, 1], severity, generator) -> [B, 3, S, S]
CORRUPTIONS: dict[str, Callable] = {
    f.__name__: f for f in (gaussian_noise, gaussian_blur, contrast, elastic, affine, occlusion)
}


def corrupt(images01: torch.Tensor, name: str, severity: int, seed: int = 0, start: int = 0) -> torch.Tensor:
    """Corrupted copy of float ``[B, 3, S, S]`` images in [0, 1], clamped to [0, 1].

    The randomness is seeded by ``(seed, name, severity, start)``, ``start``
    being the batch's offset in its set, so a sweep with a fixed batch size is
    reproducible run to run.
    """
    if name not in CORRUPTIONS:
        close = difflib.get_close_matches(name, CORRUPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}{hint}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    key = zlib.crc32(f"{seed}/{name}/{severity}/{start}".encode())
    gen = torch.Generator().manual_seed(key)
    return CORRUPTIONS[name](images01, severity, gen).clamp(0.0, 1.0)


def mean_corrupted_accuracy(acc: dict[str, dict[int, float]]) -> dict[str, float]:
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
