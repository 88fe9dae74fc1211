"""The SiameseIM method object: online branch, EMA target branch, loss.

``model(batch)`` returns ``{"loss": ..., <scalars>}``; the training loop calls
:meth:`SiameseIM.update_target` after each optimiser step (never inside
``forward``). Only :attr:`SiameseIM.online` has gradients, so DDP wraps only it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from siamim.data.geometry import view2_patch_centres
from siamim.losses import dense_loss
from siamim.model.encoder import build_encoder, encode_visible
from siamim.model.heads import Predictor, Projector


class OnlineBranch(nn.Module):
    """Encoder over visible view-1 tokens -> projector -> predictor of view-2 tokens."""

    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.encoder = build_encoder(m, cfg.data.img_size)
        self.projector = Projector(m.embed_dim, m.decoder_dim, m.decoder_heads, m.projector_depth, m.mlp_ratio, m.norm)
        self.predictor = Predictor(m.decoder_dim, m.decoder_heads, m.predictor_depth, m.mlp_ratio, m.norm, cfg.grid_size)
        self.grid = cfg.grid_size
        self.projector.apply(_init_weights)
        self.predictor.apply(_init_weights)

    def forward(self, view1: torch.Tensor, ids_keep: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """``view1 [B, 3, S, S]``, ``ids_keep [B, Lv]``, ``geometry [B, 6]`` -> predictions ``[B, G*G, Dd]``."""
        tokens = self.projector(encode_visible(self.encoder, view1, ids_keep))  # [B, 1 + Lv, Dd]
        centres = view2_patch_centres(geometry, self.grid)  # [B, G*G, 2]
        return self.predictor(tokens, ids_keep, centres, geometry)


class TargetBranch(nn.Module):
    """EMA copy of the online encoder and projector; encodes the full view 2."""

    def __init__(self, online: OnlineBranch):
        super().__init__()
        self.encoder = copy.deepcopy(online.encoder)
        self.projector = copy.deepcopy(online.projector)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, view2: torch.Tensor) -> torch.Tensor:
        """``view2 [B, 3, S, S]`` -> normalised targets ``[B, G*G, Dd]`` (cls dropped, LayerNorm without affine)."""
        tokens = self.projector(encode_visible(self.encoder, view2, None))[:, 1:]
        return F.layer_norm(tokens.float(), tokens.shape[-1:])


class SiameseIM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.loss_type = cfg.loss.type
        self.neg_weight = cfg.loss.neg_weight
        self.online = OnlineBranch(cfg)
        self.target = TargetBranch(self.online)

    def forward(self, batch: dict, online: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Loss of one batch from :class:`siamim.data.pipeline.Collate`.

        Args:
            online: the (possibly DDP-wrapped) online branch; defaults to ``self.online``.
        Returns:
            ``{"loss": scalar with grad, "loss_pos"/"loss_neg": detached (UniGrad only)}``.
        """
        online = self.online if online is None else online
        pred = online(batch["view1"], batch["ids_keep"], batch["geometry"])  # [B, L, Dd]
        target = self.target(batch["view2"])  # [B, L, Dd]
        return dense_loss(self.loss_type, pred, target, self.neg_weight)

    def target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching (target, online) parameter lists of the EMA-tracked modules."""
        tgt, src = [], []
        for name in ("encoder", "projector"):
            t_params = list(getattr(self.target, name).parameters())
            o_params = list(getattr(self.online, name).parameters())
            tgt += t_params
            src += o_params
        return tgt, src

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``t <- m * t + (1 - m) * o`` for every target parameter; buffers copied."""
        tgt, src = self.target_pairs()
        torch._foreach_mul_(tgt, momentum)
        torch._foreach_add_(tgt, src, alpha=1.0 - momentum)
        for name in ("encoder", "projector"):
            for t_buf, o_buf in zip(getattr(self.target, name).buffers(), getattr(self.online, name).buffers()):
                t_buf.copy_(o_buf)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
