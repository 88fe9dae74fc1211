"""``loss.type=smooth_l1``: Huber / smooth-L1 distance to the normalised target (Fast R-CNN's form).

Quadratic (half the squared error) for element errors below ``beta = 1``, linear above it, so a few
badly predicted elements pull less than under ``l2``. ``neg_weight`` is ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.losses._common import fp32_loss

BETA = 1.0  # the target is LayerNorm-normalised (unit variance per token), so 1 is its natural scale


@fp32_loss
def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Mean over elements of ``0.5 e^2 / beta`` if ``|e| < beta`` else ``|e| - 0.5 beta`` (``e = p - z``).

    ``[..., D]`` rows -> ``{"loss"}`` fp32 scalar.
    """
    return {"loss": F.smooth_l1_loss(pred, target, beta=BETA)}
