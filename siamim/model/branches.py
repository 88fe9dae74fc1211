"""Online and target branches for every row of the ablation (docs/method.md, "Ablation rows").

Each online branch maps ``(view1 [B,3,S,S], mask [B,L], ids_keep [B,Lv],
geometry [B,6], query_ids [B,Q] | None)`` to predictions: ``[B, Q, D_out]`` for a
dense loss (``Q = L`` view-2 patches when ``query_ids`` is None), ``[B, Dd]``
for a global one.

- :class:`MAELikeOnline` (proj & dec "MAE-like", rows a, c, d, i, j): the encoder
  sees the visible view-1 tokens only; a transformer predictor receives mask
  tokens carrying the relative position of each query (or, ``model.query_pos=grid``,
  the fixed grid position of each masked patch: MAE's decoder, configs/baselines/mae.yaml).
- :class:`MoCoLikeOnline` (rows b, e-h, k): the encoder sees all ``L`` tokens with
  masked patches replaced by a learned mask token; for cross-view prediction
  the ``L`` view-2 queries (mask token + relative position embedding) are
  appended to the encoder's sequence; projector and predictor are per-token MLPs.
- :class:`TargetBranch`: EMA copy of the online encoder and projector, over the
  full view 2; targets normalised by a LayerNorm without affine.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from siamim.data.geometry import view2_patch_centres
from siamim.model.encoder import build_encoder, encode_visible, encode_with_mask_tokens, uses_final_norm
from siamim.model.heads import MLPHead, Predictor, Projector, RelativePositionEmbedding, gather_tokens
from siamim.model.init import init_token, official_init


def pool(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B, 1 + L, D]`` (cls first) -> ``[B, 1, D]``: the cls token or the mean of the patch tokens."""
    return tokens[:, :1] if kind == "cls" else tokens[:, 1:].mean(dim=1, keepdim=True)


class MAELikeOnline(nn.Module):
    """Encoder over visible view-1 tokens -> projector (linear + blocks) -> transformer predictor."""

    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        pixel = m.target == "pixel"
        self.grid = cfg.grid_size
        self.final_norm = uses_final_norm(m)
        self.encoder = build_encoder(m, cfg.data.img_size)
        self.projector = Projector(m.embed_dim, m.decoder_dim, m.decoder_heads, m.projector_depth, m.mlp_ratio, m.norm)
        out_dim = 3 * m.patch_size**2 if pixel else m.decoder_dim
        self.predictor = Predictor(
            m.decoder_dim,
            m.decoder_heads,
            m.predictor_depth,
            m.mlp_ratio,
            m.norm,
            self.grid,
            out_dim=out_dim,
            pre_head_norm=pixel,
            query_pos=m.query_pos,
        )
        self.projector.apply(official_init)
        self.predictor.apply(official_init)
        init_token(self.predictor.mask_token)

    def forward(self, view1, mask, ids_keep, geometry, query_ids=None) -> torch.Tensor:
        """``view1 [B, 3, H, W]``, ``mask`` bool ``[B, G*G]``, ``ids_keep [B, Lv]``, ``geometry [B, 6]``, ``query_ids``
        ``[B, Q]`` or None -> ``[B, Q, D_out]`` predictions (``Q = G*G`` when ``query_ids`` is None)."""
        tokens = self.projector(encode_visible(self.encoder, view1, ids_keep, self.final_norm))  # [B, 1+Lv, Dd]
        if self.predictor.rel_pos is None:  # model.query_pos=grid (MAE): the masked patches' own positions
            return self.predictor(tokens, ids_keep, self.predictor.grid_queries(query_ids))
        centres = view2_patch_centres(geometry, self.grid)  # [B, G*G, 2]
        if query_ids is not None:
            centres = gather_tokens(centres, query_ids)  # [B, Q, 2]
        return self.predictor(tokens, ids_keep, self.predictor.relative_queries(centres, geometry))


class MoCoLikeOnline(nn.Module):
    """Encoder over all view-1 tokens (mask tokens at masked positions) -> MLP projector -> MLP predictor."""

    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.grid = cfg.grid_size
        self.scope = cfg.loss.scope
        self.pool_kind = cfg.loss.global_pool
        self.cross_view = cfg.views.different_views and self.scope == "dense"
        self.encoder = build_encoder(m, cfg.data.img_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, m.embed_dim))
        self.rel_pos = RelativePositionEmbedding(m.embed_dim) if self.cross_view else None
        hidden = int(m.decoder_dim * m.mlp_ratio)
        self.projector = MLPHead(m.embed_dim, hidden, m.decoder_dim, m.projector_depth, m.norm)
        self.predictor = MLPHead(m.decoder_dim, hidden, m.decoder_dim, m.predictor_depth, m.norm)
        for module in (self.projector, self.predictor, self.rel_pos):
            if module is not None:
                module.apply(official_init)
        init_token(self.mask_token)

    def forward(self, view1, mask, ids_keep, geometry, query_ids=None) -> torch.Tensor:
        """The same inputs as :meth:`MAELikeOnline.forward` -> ``[B, Q, Dd]`` (dense) or ``[B, Dd]`` (global)."""
        num_patches = mask.shape[1]
        extra = None
        if self.cross_view:
            centres = view2_patch_centres(geometry, self.grid)  # [B, L, 2]
            extra = self.mask_token + self.rel_pos(centres, geometry)  # [B, L, De]
        x = encode_with_mask_tokens(self.encoder, view1, mask, self.mask_token, extra)  # [B, 1+L(+L), De]
        if self.scope == "global":
            return self.predictor(self.projector(pool(x[:, : 1 + num_patches], self.pool_kind)))[:, 0]  # [B, Dd]
        if self.cross_view:
            feats = x[:, 1 + num_patches :]  # [B, L, De]: the view-2 queries
        else:
            feats = gather_tokens(x[:, 1:], query_ids)  # [B, Q, De]: view 1's masked positions
        return self.predictor(self.projector(feats))


class TargetBranch(nn.Module):
    """EMA copy of the online encoder and projector; encodes the full, unmasked view 2."""

    def __init__(self, online: nn.Module, cfg):
        super().__init__()
        self.encoder = copy.deepcopy(online.encoder)
        self.projector = copy.deepcopy(online.projector)
        self.transformer_projector = cfg.model.heads == "mae_like"
        self.scope = cfg.loss.scope
        self.pool_kind = cfg.loss.global_pool
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, view2: torch.Tensor, query_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``view2 [B, 3, S, S]`` -> normalised targets ``[B, Q, Dd]`` (dense) or ``[B, Dd]`` (global)."""
        x = encode_visible(self.encoder, view2, None)  # [B, 1+L, De], no final norm
        if self.scope == "global":
            z = self.projector(pool(x, self.pool_kind))[:, 0]  # [B, Dd]
        elif self.transformer_projector:
            z = self.projector(x)[:, 1:]  # the projector's blocks see cls too; drop it after
        else:
            z = self.projector(x[:, 1:])  # per-token MLP over the patch tokens
        if query_ids is not None:
            z = gather_tokens(z, query_ids)
        return F.layer_norm(z.float(), z.shape[-1:])


def build_online(cfg) -> nn.Module:
    """The online branch for ``model.heads``."""
    return MAELikeOnline(cfg) if cfg.model.heads == "mae_like" else MoCoLikeOnline(cfg)
