"""Helpers shared by the loss plugins (private: not a ``loss.type``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def fp32_rows(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., D]`` pair -> fp32 ``[N, D]`` pair (target detached); checks the shapes match."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dim = pred.shape[-1]
    return pred.float().reshape(-1, dim), target.detach().float().reshape(-1, dim)


def fp32_loss(fn: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
    """Make ``fn(p, z, *args)`` on fp32 ``[N, D]`` rows a loss of ``(pred [..., D], target [..., D], *args)``.

    The wrapped loss runs with autocast disabled (its matmuls stay fp32 under a bf16/fp16 step), sees the
    target detached, and gets a clear error when the shapes differ: every plugin gets this by the decorator.
    """

    @functools.wraps(fn)
    def loss(pred: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        with torch.autocast(pred.device.type, enabled=False):
            return fn(*fp32_rows(pred, target), *args, **kwargs)

    return loss
