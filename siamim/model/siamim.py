"""The SiameseIM method object: online branch, EMA target branch (or pixel target), loss.

``model(batch)`` returns ``{"loss": ..., <scalars>}``; the training loop calls
:meth:`SiameseIM.update_target` after each optimiser step (never inside
``forward``). Only :attr:`SiameseIM.online` has gradients, so DDP wraps only it.
Every ablation row (docs/method.md) is this object under a different config.
"""

from __future__ import annotations

import torch
from torch import nn

from siamim.losses import compute_loss
from siamim.model.branches import TargetBranch, build_online, gather_tokens
from siamim.model.pixels import normalised_pixels


class SiameseIM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.loss_type = cfg.loss.type
        self.neg_weight = cfg.loss.neg_weight
        self.patch_size = cfg.model.patch_size
        self.pixel_target = cfg.model.target == "pixel"
        # Same-view rows (a-c): view 2 is view 1, so only the masked positions are predicted (as MAE).
        self.masked_queries = not cfg.views.different_views and cfg.loss.scope == "dense"
        self.online = build_online(cfg)
        self.target = None if self.pixel_target else TargetBranch(self.online, cfg)

    def forward(self, batch: dict, online: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Loss of one batch from :class:`siamim.data.pipeline.Collate`.

        Args:
            online: the (possibly DDP-wrapped) online branch; defaults to ``self.online``.
        Returns:
            ``{"loss": scalar with grad, ...}``; UniGrad adds detached ``loss_pos``/``loss_neg``.
        """
        online = self.online if online is None else online
        query_ids = batch["ids_masked"] if self.masked_queries else None  # [B, Lm] or None (all view-2 patches)
        pred = online(batch["view1"], batch["mask"], batch["ids_keep"], batch["geometry"], query_ids)
        target = self.compute_target(batch["view2"], query_ids)
        return compute_loss(self.loss_type, pred, target, self.neg_weight)

    @torch.no_grad()
    def compute_target(self, view2: torch.Tensor, query_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``view2 [B, 3, S, S]`` -> targets ``[B, Q, D]`` (dense) or ``[B, D]`` (global), fp32, no grad."""
        if not self.pixel_target:
            return self.target(view2, query_ids)
        pixels = normalised_pixels(view2, self.patch_size)  # [B, L, 3*p*p]
        return pixels if query_ids is None else gather_tokens(pixels, query_ids)

    def target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (target, online) parameter lists of the EMA-tracked modules (empty for a pixel target)."""
        tgt, src = [], []
        if self.target is None:
            return tgt, src
        for name in ("encoder", "projector"):
            tgt += list(getattr(self.target, name).parameters())
            src += list(getattr(self.online, name).parameters())
        return tgt, src

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``t <- m * t + (1 - m) * o`` for every target parameter; buffers copied. No-op for a pixel target."""
        if self.target is None:
            return
        tgt, src = self.target_pairs()
        torch._foreach_mul_(tgt, momentum)
        torch._foreach_add_(tgt, src, alpha=1.0 - momentum)
        for name in ("encoder", "projector"):
            for t_buf, o_buf in zip(getattr(self.target, name).buffers(), getattr(self.online, name).buffers()):
                t_buf.copy_(o_buf)
