"""Projectors, predictors and the relative position embedding (docs/method.md, "Architecture").

MAE-like (rows d, i, j, a, c): :class:`Projector` (linear + transformer blocks) and
:class:`Predictor` (transformer decoder over visible tokens + view-2 queries).
MoCo-like (rows b, e-h, k): :class:`MLPHead` per token, for both.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from siamim.model.pos_embed import sincos_1d, sincos_2d_grid


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x [B, L, D]``, ``ids [B, Q]`` -> ``[B, Q, D]``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class TokenBatchNorm(nn.Module):
    """BatchNorm over tokens: statistics over all ``B*N`` tokens of ``[B, N, D]``.

    The ``nn.BatchNorm1d`` (PyTorch's eps 1e-5, as the release's ``PermuteBN``) sits in a child so
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` can replace it for data-parallel runs.
    """

    def __init__(self, dim: int, eps: float = 1e-5, **factory_kwargs):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, **factory_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def norm_layer(kind: str):
    """``'bn'`` -> :class:`TokenBatchNorm`, ``'ln'`` -> LayerNorm (ablation row g)."""
    if kind == "bn":
        return TokenBatchNorm
    if kind == "ln":
        return lambda dim, **kw: nn.LayerNorm(dim, eps=1e-6, **kw)
    raise ValueError(f"unknown model.norm {kind!r}; choose 'bn' or 'ln'")


def blocks(dim: int, heads: int, depth: int, mlp_ratio: float, norm: str) -> nn.Sequential:
    return nn.Sequential(
        *[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer(norm)) for _ in range(depth)]
    )


class Projector(nn.Module):
    """Linear to the decoder width, then transformer blocks. ``[B, N, De] -> [B, N, Dd]``."""

    def __init__(self, in_dim: int, dim: int, heads: int, depth: int, mlp_ratio: float, norm: str):
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.blocks = blocks(dim, heads, depth, mlp_ratio, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.linear(x))


class RelativePositionEmbedding(nn.Module):
    """Embeds view-2 query positions relative to view 1.

    Four scalars per query, its row and column in view-1 patch units and
    ``10*log(dh)``, ``10*log(dw)``, each sin-cos embedded to width ``D/2``
    (``D/4`` sines + ``D/4`` cosines), concatenated to ``2D`` and mapped to ``D``
    by a learned linear layer.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(2 * dim, dim)

    def features(self, centres: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """``centres [B, L2, 2]``, ``geometry [B, 6]`` -> fixed features ``[B, L2, 2D]``."""
        log_scale = 10.0 * torch.log(geometry[:, 2:4])  # [B, 2] (dh, dw)
        log_scale = log_scale[:, None, :].expand(-1, centres.shape[1], -1)  # [B, L2, 2]
        scalars = torch.cat([centres, log_scale], dim=-1)  # [B, L2, 4]
        return sincos_1d(scalars, self.dim // 2).flatten(-2)  # [B, L2, 4 * D/2]

    def forward(self, centres: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(centres, geometry))  # [B, L2, D]


class Predictor(nn.Module):
    """Transformer decoder that predicts view-2 tokens from visible view-1 tokens.

    Input sequence: ``[cls + pos_cls, visible + pos(view-1 grid), mask_token +
    query position]``; blocks, then the output linear layer directly (the
    official structure: no norm in between) unless ``pre_head_norm`` (MAE's
    decoder norm, pixel-target rows); the outputs at the queries are the prediction.

    The query position (``query_pos``): ``"relative"`` embeds each view-2 query's position
    relative to view 1 (:class:`RelativePositionEmbedding`, SiameseIM); ``"grid"`` adds the fixed
    sin-cos position of the masked view-1 patch it stands for, which is MAE's decoder (MAE restores
    the full grid order before its blocks; attention without positional bias does not depend on the
    order of the sequence, so appending the mask tokens is the same computation).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int,
        mlp_ratio: float,
        norm: str,
        grid: int,
        out_dim: int | None = None,
        pre_head_norm: bool = False,
        query_pos: str = "relative",
    ):
        super().__init__()
        self.register_buffer("pos_embed", sincos_2d_grid(dim, grid).unsqueeze(0), persistent=False)  # [1, 1+L, D]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rel_pos = RelativePositionEmbedding(dim) if query_pos == "relative" else None
        self.blocks = blocks(dim, heads, depth, mlp_ratio, norm)
        self.norm = norm_layer(norm)(dim) if pre_head_norm else nn.Identity()
        self.head = nn.Linear(dim, out_dim or dim)

    def forward(self, tokens: torch.Tensor, ids_keep: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tokens: projector output ``[B, 1 + Lv, D]`` (cls first).
            ids_keep: ``[B, Lv]`` view-1 grid index of each visible token.
            queries: ``[B, Q, D]`` query positions from :meth:`relative_queries` or :meth:`grid_queries`.
        Returns:
            ``[B, Q, out_dim]`` predictions at the queries.
        """
        pos = self.pos_embed.expand(tokens.shape[0], -1, -1)
        vis_pos = gather_tokens(pos[:, 1:], ids_keep)  # [B, Lv, D]
        queries = self.mask_token + queries  # [B, Q, D]
        x = torch.cat([tokens[:, :1] + pos[:, :1], tokens[:, 1:] + vis_pos, queries.to(tokens.dtype)], dim=1)
        x = self.head(self.norm(self.blocks(x)))
        return x[:, -queries.shape[1] :]

    def relative_queries(self, centres: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """``centres [B, Q, 2]`` (view-2 patch centres in view-1 patch units), ``geometry [B, 6]`` -> ``[B, Q, D]``."""
        return self.rel_pos(centres, geometry)

    def grid_queries(self, query_ids: torch.Tensor) -> torch.Tensor:
        """``query_ids [B, Q]`` (masked view-1 patches) -> their fixed grid positions ``[B, Q, D]``."""
        return gather_tokens(self.pos_embed[:, 1:].expand(query_ids.shape[0], -1, -1), query_ids)


class MLPHead(nn.Module):
    """Per-token MLP (MoCo v3 style): ``depth`` x (Linear -> norm -> ReLU), then a Linear.

    ``[B, N, in_dim] -> [B, N, out_dim]``; the norm is :class:`TokenBatchNorm` or
    LayerNorm (``model.norm``); the last Linear has no norm after it.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), norm_layer(norm)(hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
