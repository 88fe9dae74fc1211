"""``loss.type=cosine``: ``2 - 2 cos`` between prediction and target (BYOL's form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.losses._common import fp32_rows


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Squared distance of L2-normalised prediction and target, ``2 - 2 cos`` (BYOL's form).

    Args:
        pred, target: ``[..., D]``.
    Returns:
        ``{"loss"}`` fp32 scalar. ``neg_weight`` is ignored.
    """
    with torch.autocast(pred.device.type, enabled=False):
        p, z = fp32_rows(pred, target)
        loss = (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1).mean()
    return {"loss": loss}
