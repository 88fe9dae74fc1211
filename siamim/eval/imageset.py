"""In-memory evaluation image sets: images already resized to the model input size.

Every protocol works on an :class:`ImageSet`: uint8 ``[N, 3, S, S]`` images at
``cfg.data.img_size`` plus int64 labels and the normalisation statistics of the
source. Resizing once (batched, antialiased, like
:func:`siamim.data.sources.eval_batch`) keeps feature extraction, fine-tuning
epochs and corruption sweeps from re-decoding the source for every pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from siamim.data.sources import ImageSource


@dataclass
class ImageSet:
    """``images``: uint8 ``[N, 3, S, S]``; ``labels``: long ``[N]``; ``mean``/``std``: per channel, in [0, 1] units."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"ImageSet.images must be uint8 [N, 3, S, S], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.labels) != len(self.images):
            raise ValueError(f"ImageSet has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return int(self.images.shape[-1])

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        """Float ``[B, 3, S, S]`` in [0, 1] -> normalised model input ``[B, 3, S, S]``."""
        mean = torch.tensor(self.mean, device=images01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images01.device).view(1, 3, 1, 1)
        return (images01 - mean) / std

    def uint8(self, start: int, end: int) -> torch.Tensor:
        """uint8 ``[end - start, 3, S, S]``: images ``start:end``."""
        return self.images[start:end]

    def batch(self, start: int, end: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Normalised float ``[end - start, 3, S, S]`` model input for images ``start:end``."""
        return self.normalize(self.images[start:end].to(device).float().div_(255.0))

    def subset(self, indices) -> ImageSet:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.mean, self.std, self.classes)


def load_image_set(source: ImageSource, img_size: int, indices=None, chunk: int = 4096) -> ImageSet:
    """Resize ``source`` images (all, or ``indices``) to ``img_size`` once.

    Returns an :class:`ImageSet` with uint8 ``[N, 3, img_size, img_size]`` images,
    resized with antialiasing exactly as :func:`siamim.data.sources.eval_batch` does.
    """
    from torchvision.transforms.v2 import functional as TF

    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(source)):
        raise IndexError(f"indices must lie in [0, {len(source)}), got range [{idx.min()}, {idx.max()}]")
    out = torch.empty(len(idx), 3, img_size, img_size, dtype=torch.uint8)
    raw = getattr(source, "images", None)
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        if isinstance(raw, np.ndarray) and raw.ndim == 3:  # grey ArraySource: one vectorised resize
            imgs = torch.from_numpy(np.ascontiguousarray(raw[part])).unsqueeze(1).expand(-1, 3, -1, -1)
            out[start : start + len(part)] = TF.resize(imgs.contiguous(), [img_size, img_size], antialias=True)
        else:
            for k, i in enumerate(part):
                out[start + k] = TF.resize(source.image(int(i)), [img_size, img_size], antialias=True)
    labels = torch.as_tensor(np.asarray(source.labels)[idx], dtype=torch.long)
    return ImageSet(out, labels, tuple(source.mean), tuple(source.std), tuple(source.classes))


class SourceImageSet:
    """``source`` images ``indices`` at ``img_size``, resized per batch as :func:`load_image_set` does:
    what feature extraction reads of an :class:`ImageSet` (``len``, ``labels``, ``normalize``, ``uint8``)
    without holding a split in memory (the pretraining job's final kNN on large data)."""

    def __init__(self, source: ImageSource, img_size: int, indices=None):
        self.source, self.img_size = source, img_size
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(source.labels)[self.indices], dtype=torch.long)
        self.mean, self.std, self.classes = tuple(source.mean), tuple(source.std), tuple(source.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def uint8(self, start: int, end: int) -> torch.Tensor:
        """uint8 ``[end - start, 3, S, S]``: images ``start:end``, resized now."""
        return load_image_set(self.source, self.img_size, self.indices[start:end]).images

    normalize = ImageSet.normalize
