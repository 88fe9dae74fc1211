"""Helpers shared by the loss plugins (private: not a ``loss.type``)."""

from __future__ import annotations

import torch


def fp32_rows(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., D]`` pair -> fp32 ``[N, D]`` pair (target detached); checks the shapes match."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dim = pred.shape[-1]
    return pred.float().reshape(-1, dim), target.detach().float().reshape(-1, dim)
