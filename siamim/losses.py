"""Losses between predictions and targets (docs/method.md, "Loss").

Pure functions, computed in fp32 with autocast disabled (so the matmuls stay in
fp32 when the step runs under bf16/fp16 autocast); the only collective is the
UniGrad correlation's all-reduce, taken only when a process group exists.
``LOSSES`` maps each ``loss.type`` to its function ``(pred, target, neg_weight)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from siamim.dist import all_reduce_mean


def _fp32(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., D]`` pair -> fp32 ``[N, D]`` pair (target detached); checks the shapes match."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dim = pred.shape[-1]
    return pred.float().reshape(-1, dim), target.detach().float().reshape(-1, dim)


def unigrad_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> dict[str, torch.Tensor]:
    """UniGrad over all rows (tokens, or images for a global loss).

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
    with torch.autocast(pred.device.type, enabled=False):
        p, z = _fp32(pred, target)  # [N, D]
        dim = p.shape[-1]
        corr = all_reduce_mean(z.T @ z / z.shape[0])  # [D, D]
        positive = (p - z).pow(2).sum(-1).mean()
        negative = ((p @ corr) * p).sum(-1).mean()
        loss = (positive + neg_weight * negative) / dim
    return {"loss": loss, "loss_pos": positive.detach() / dim, "loss_neg": negative.detach() / dim}


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
        p, z = _fp32(pred, target)
        loss = (p - z).pow(2).mean()
    return {"loss": loss}


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Squared distance of L2-normalised prediction and target, ``2 - 2 cos`` (BYOL's form).

    Args:
        pred, target: ``[..., D]``.
    Returns:
        ``{"loss"}`` fp32 scalar. ``neg_weight`` is ignored.
    """
    with torch.autocast(pred.device.type, enabled=False):
        p, z = _fp32(pred, target)
        loss = (F.normalize(p, dim=-1) - F.normalize(z, dim=-1)).pow(2).sum(-1).mean()
    return {"loss": loss}


LOSSES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "unigrad": unigrad_loss,
    "l2": l2_loss,
    "cosine": cosine_loss,
}


def compute_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, neg_weight: float) -> dict[str, torch.Tensor]:
    """Dispatch on ``loss.type`` (a key of :data:`LOSSES`)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss.type {kind!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[kind](pred, target, neg_weight)
