"""``loss.type=cosine``: ``2 - 2 cos`` between prediction and target (BYOL's form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.losses._common import fp32_loss


@fp32_loss
def cosine_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Squared distance of L2-normalised prediction and target, ``2 - 2 cos`` (BYOL's form).

    ``[..., D]`` rows -> ``{"loss"}`` fp32 scalar. ``neg_weight`` is ignored.
    """
    return {"loss": (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1).mean()}
