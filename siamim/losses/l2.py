"""``loss.type=l2``: MSE to the normalised target (row j; MAE's loss in the pixel rows a, c, d)."""

from __future__ import annotations

import torch

from siamim.losses._common import fp32_loss


@fp32_loss
def l2_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Mean squared error per element, ``mean_k ||p_k - z_k||^2 / D``, of ``[..., D]`` rows -> ``{"loss"}``.

    With the LayerNorm-normalised feature target this is UniGrad with ``neg_weight = 0``
    (ablation row j); with the per-patch normalised pixel target it is MAE's
    ``norm_pix_loss`` (rows a, c, d). ``neg_weight`` is ignored.
    """
    return {"loss": (pred - target).pow(2).mean()}
