"""The pixel target of ablation rows a, c, d (MAE's ``norm_pix_loss``)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into row-major patches.

    Args:
        images: ``[B, C, S, S]``.
        patch: patch side ``p`` (divides ``S``).
    Returns:
        ``[B, L, p*p*C]`` with ``L = (S/p)^2``; inside a patch the order is (row, column, channel), as MAE's.
    """
    b, c, s, _ = images.shape
    g = s // patch
    x = images.reshape(b, c, g, patch, g, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, g * g, patch * patch * c)


def normalised_pixels(images: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Each patch's pixels standardised by that patch's mean and (unbiased) variance.

    ``[B, C, S, S] -> [B, L, p*p*C]`` fp32: ``(x - mean) / sqrt(var + eps)`` per patch.
    """
    x = patchify(images.float(), patch)
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)
    return (x - mean) / (var + eps).sqrt()
