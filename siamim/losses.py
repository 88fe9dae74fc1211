"""Dense losses between predictions and targets (PAPER.md, "Loss: UniGrad").

Pure functions in fp32; the only collective is the UniGrad correlation's
all-reduce, taken only when a process group exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.dist import all_reduce_mean


def unigrad_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> dict[str, torch.Tensor]:
    """UniGrad over all tokens.

    ``positive = mean_k ||p_k - z_k||^2``; ``C = (1/N) sum_k z_k z_k^T`` averaged
    over data-parallel workers; ``negative = mean_k p_k^T C p_k`` computed row-wise
    as ``((P @ C) * P).sum(-1)`` (never an N x N matrix);
    ``loss = (positive + neg_weight * negative) / D``.

    Args:
        pred: ``[..., D]`` predictions (any leading shape, flattened to ``[N, D]``).
        target: ``[..., D]`` targets, same shape; treated as constants.
    Returns:
        ``{"loss", "loss_pos", "loss_neg"}`` fp32 scalars (pos/neg detached).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dim = pred.shape[-1]
    p = pred.float().reshape(-1, dim)  # [N, D]
    z = target.detach().float().reshape(-1, dim)  # [N, D]
    corr = all_reduce_mean(z.T @ z / z.shape[0])  # [D, D]
    positive = (p - z).pow(2).sum(-1).mean()
    negative = ((p @ corr) * p).sum(-1).mean()
    loss = (positive + neg_weight * negative) / dim
    return {"loss": loss, "loss_pos": positive.detach() / dim, "loss_neg": negative.detach() / dim}


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean squared distance between L2-normalised prediction and target (``2 - 2 cos``).

    Args:
        pred, target: ``[..., D]``.
    Returns:
        ``{"loss"}`` fp32 scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = F.normalize(pred.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return {"loss": (p - z).pow(2).sum(-1).mean()}


def dense_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, neg_weight: float) -> dict[str, torch.Tensor]:
    """Dispatch on ``loss.type``."""
    if kind == "unigrad":
        return unigrad_loss(pred, target, neg_weight)
    if kind == "l2":
        return l2_loss(pred, target)
    raise ValueError(f"unknown loss.type {kind!r}; choose 'unigrad' or 'l2'")
