"""The SiameseIM method object: online branch, EMA target branch (or pixel target), loss.

``model(batch)`` returns ``{"loss": ..., <scalars>}``; the training loop calls
:meth:`SiameseIM.update_target` after each optimiser step (never inside
``forward``). Only :attr:`SiameseIM.online` has gradients, so DDP wraps only it,
in place through :meth:`SiameseIM.wrap_online` (``forward`` then runs the wrapper).
Every ablation row (docs/method.md) is this object under a different config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from siamim.losses import compute_loss
from siamim.model.branches import TargetBranch, build_online
from siamim.model.heads import gather_tokens
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

    def wrap_online(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """From now on ``forward`` runs the online branch through ``wrap(branch)`` (DDP, ``torch.compile``).

        Calls stack: ``wrap_online(ddp); wrap_online(torch.compile)`` compiles the DDP-wrapped branch.
        The wrapper is held outside the module tree, so parameter names, the state dict (checkpoints),
        the EMA pairs and ``self.online.encoder`` stay those of the bare branch: a wrapper registered as
        ``self.online`` would prefix every key with ``module.``, which DDP, unlike the FSDP that dinov2
        wraps its submodules in, neither strips from the state dict nor forwards attribute access past.
        """
        self.__dict__["_online_wrapped"] = wrap(self.__dict__.get("_online_wrapped", self.online))

    def train(self, mode: bool = True) -> SiameseIM:
        """``nn.Module.train``, also setting the mode of the :meth:`wrap_online` wrapper."""
        super().train(mode)
        wrapped = self.__dict__.get("_online_wrapped")
        if wrapped is not None:
            wrapped.train(mode)
        return self

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Loss of one batch from :class:`siamim.data.pipeline.Collate`.

        Args:
            batch: ``view1``/``view2`` ``[B, 3, S, S]``, ``mask`` ``[B, L]``, ``ids_keep`` ``[B, Lv]``,
                ``ids_masked`` ``[B, L - Lv]``, ``geometry`` ``[B, 6]``.
        Returns:
            ``{"loss": scalar with grad, ...}``; UniGrad adds detached ``loss_pos``/``loss_neg``.
        """
        online = self.__dict__.get("_online_wrapped", self.online)  # DDP / compiled, see wrap_online
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
            target, online = getattr(self.target, name), getattr(self.online, name)
            for t_buf, o_buf in zip(target.buffers(), online.buffers(), strict=True):
                t_buf.copy_(o_buf)
