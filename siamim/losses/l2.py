"""``loss.type=l2``: MSE to the normalised target (row j; MAE's loss in the pixel rows a, c, d)."""

from __future__ import annotations

import torch

from siamim.losses._common import fp32_rows


def l2_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Mean squared error per element: ``mean_k ||p_k - z_k||^2 / D``.

    With the LayerNorm-normalised feature target this is UniGrad with ``neg_weight = 0``
    (ablation row j); with the per-patch normalised pixel target it is MAE's
    ``norm_pix_loss`` (rows a, c, d). ``neg_weight`` is ignored.

    Args:
        pred, target: ``[..., D]``.
    Returns:
        ``{"loss"}`` fp32 scalar.
    """
    with torch.autocast(pred.device.type, enabled=False):
        p, z = fp32_rows(pred, target)
        loss = (p - z).pow(2).mean()
    return {"loss": loss}
