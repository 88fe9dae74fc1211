"""Dense probe (counterpart of COCO detection / ADE20k segmentation): spatial sensitivity.

Mosaic segmentation set, built from real Fashion-MNIST images (deterministic
for a seed):

- mosaic ``m`` is a 2x2 grid of four images drawn with replacement-free
  per-mosaic sampling by ``numpy.random.default_rng(seed)`` from the split;
  quadrant ``q`` (row-major: top-left, top-right, bottom-left, bottom-right)
  holds image ``placed[m, q]`` resized (antialiased) to ``S/2 x S/2``, so the
  mosaic has the model's input size ``S``;
- per-pixel label: ``1 + class`` of the quadrant's item where the resized
  item's intensity is at least :data:`FOREGROUND_THRESHOLD` (the item is
  there), ``0`` (background) elsewhere; ``C + 1`` labels in all.

Probe: frozen patch tokens ``[B, L, D]`` -> ``BatchNorm1d(affine=False)`` +
linear per token -> logits on the ``G x G`` grid, bilinearly upsampled to
``S x S``, per-pixel cross-entropy, trained like the LIN head (warm-up
+ cosine) with AdamW (lr = ``blr * batch / 256``; LARS's tiny trust ratio barely moves a
head in the few hundred steps this set allows). Metric: mIoU over the ``C + 1`` labels (background included, the
ADE20k convention of averaging over all classes that occur), plus pixel accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from siamim.data.sources import ImageSource
from siamim.eval.imageset import ImageSet, load_image_set
from siamim.eval.linear_probe import LinearProbe, fit_head

FOREGROUND_THRESHOLD = 26  # uint8 intensity (~10%): the item is under the pixel from here up


@dataclass
class MosaicSet:
    """``images``: ImageSet of mosaics ``[M, 3, S, S]`` (its ``labels`` = the top-left class);
    ``masks``: long ``[M, S, S]`` in ``0..C`` (0 background); ``placed``: int64 ``[M, 4]`` source indices."""

    images: ImageSet
    masks: torch.Tensor
    placed: np.ndarray

    @property
    def num_labels(self) -> int:
        return self.images.num_classes + 1


def build_mosaics(source: ImageSource, num: int, img_size: int, seed: int = 0, pool=None) -> MosaicSet:
    """``num`` 2x2 mosaics at ``img_size`` from ``source`` images (``pool``: allowed indices, default all)."""
    if img_size % 2:
        raise ValueError(f"img_size={img_size} must be even to tile a 2x2 mosaic")
    if num < 1:
        raise ValueError(f"number of mosaics must be >= 1, got {num}")
    pool = np.arange(len(source)) if pool is None else np.asarray(pool, dtype=np.int64)
    if len(pool) < 4:
        raise ValueError(f"mosaics need at least 4 source images, got {len(pool)}")
    rng = np.random.default_rng(seed)
    placed = np.stack([rng.choice(pool, size=4, replace=False) for _ in range(num)])  # [M, 4]
    half = img_size // 2
    tiles = load_image_set(source, half, placed.reshape(-1))  # [4M, 3, h, h]
    t = tiles.images.view(num, 2, 2, 3, half, half)  # [M, row, col, 3, h, h]
    images = t.permute(0, 3, 1, 4, 2, 5).reshape(num, 3, img_size, img_size)
    fg = tiles.images.amax(dim=1) >= FOREGROUND_THRESHOLD  # [4M, h, h]
    lab = torch.where(fg, tiles.labels.view(-1, 1, 1) + 1, 0).view(num, 2, 2, half, half)
    masks = lab.permute(0, 1, 3, 2, 4).reshape(num, img_size, img_size)
    mosaic = ImageSet(
        images.contiguous(), tiles.labels.view(num, 4)[:, 0].clone(), tiles.mean, tiles.std, tiles.classes
    )
    return MosaicSet(mosaic, masks.long(), placed)


class DenseProbe(torch.nn.Module):
    """Tokens ``[B, L, D]`` (L = G*G) -> per-pixel logits ``[B, K, S, S]``."""

    def __init__(self, dim: int, num_labels: int, img_size: int):
        super().__init__()
        self.head = LinearProbe(dim, num_labels)
        self.img_size = img_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"dense probe needs a square token grid, got L={n}")
        logits = self.head(tokens.reshape(b * n, d)).view(b, g, g, -1).permute(0, 3, 1, 2)  # [B, K, G, G]
        return F.interpolate(logits, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)


def _pixel_ce(head, x, y):
    return F.cross_entropy(head(x), y)


def train_dense_probe(
    tokens: torch.Tensor,
    masks: torch.Tensor,
    num_labels: int,
    epochs: int = 30,
    batch_size: int = 256,
    blr: float = 1e-3,
    warmup_epochs: float = 2,
    seed: int = 0,
    device="cpu",
    progress=None,
) -> DenseProbe:
    """Fit :class:`DenseProbe` on frozen ``tokens`` ``[M, L, D]`` and ``masks`` long ``[M, S, S]``."""
    if tokens.ndim != 3 or len(tokens) != len(masks):
        raise ValueError(
            f"tokens must be [M, L, D] matching masks [M, S, S]; got {tuple(tokens.shape)}, {tuple(masks.shape)}"
        )
    torch.manual_seed(seed)
    probe = DenseProbe(tokens.shape[-1], num_labels, masks.shape[-1])
    per_epoch = -(-len(tokens) // max(2, min(batch_size, len(tokens))))
    return fit_head(
        probe,
        tokens,
        masks,
        _pixel_ce,
        epochs * per_epoch,
        batch_size,
        blr,
        round(warmup_epochs * per_epoch),
        seed,
        device,
        progress,
        optimizer="adamw",
    )


@torch.no_grad()
def segment(probe: DenseProbe, tokens: torch.Tensor, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """long ``[M, S, S]`` per-pixel predictions."""
    probe.eval().to(device)
    return torch.cat(
        [probe(tokens[s : s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(tokens), batch_size)]
    )


def confusion(pred: torch.Tensor, target: torch.Tensor, num_labels: int) -> torch.Tensor:
    """long ``[K, K]``: rows = target label, columns = predicted label."""
    flat = target.reshape(-1) * num_labels + pred.reshape(-1)
    return torch.bincount(flat, minlength=num_labels * num_labels).view(num_labels, num_labels)


def miou(conf: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``(mIoU %, IoU [K] %)`` from a confusion matrix; labels absent from both target and prediction are NaN
    and left out of the mean."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, 100.0 * inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return float(iou[~iou.isnan()].mean()), iou
