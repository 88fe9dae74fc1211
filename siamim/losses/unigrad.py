"""``loss.type=unigrad``: UniGrad over the query tokens of the global batch (rows i, b, e-h, k)."""

from __future__ import annotations

import torch

from siamim.dist import all_reduce_mean
from siamim.losses._common import fp32_loss


@fp32_loss
def unigrad_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> dict[str, torch.Tensor]:
    """UniGrad over all rows (tokens, or images for a global loss).

    ``positive = mean_k ||p_k - z_k||^2``; ``C = (1/N) sum_k z_k z_k^T`` averaged
    over data-parallel workers; ``negative = mean_k p_k^T C p_k`` computed row-wise
    as ``((P @ C) * P).sum(-1)`` (never an N x N matrix);
    ``loss = (positive + neg_weight * negative) / D``.

    Args:
        pred: ``[..., D]`` predictions (any leading shape; :func:`fp32_loss` hands them over as fp32 ``[N, D]``).
        target: ``[..., D]`` targets, same shape; treated as constants.
    Returns:
        ``{"loss", "loss_pos", "loss_neg"}`` fp32 scalars (pos/neg detached).
    """
    dim = pred.shape[-1]
    corr = all_reduce_mean(target.T @ target / target.shape[0])  # [D, D]
    positive = (pred - target).pow(2).sum(-1).mean()
    negative = ((pred @ corr) * pred).sum(-1).mean()
    loss = (positive + neg_weight * negative) / dim
    return {"loss": loss, "loss_pos": positive.detach() / dim, "loss_neg": negative.detach() / dim}
