"""ViT encoder: timm's ``VisionTransformer`` with fixed sin-cos position
embedding, an optionally frozen patch projection, and masked forwards.

Using timm's class itself (not a look-alike) means the encoder's state dict is
exactly what ``timm.create_model(cfg.model.timm_name, num_classes=0, ...)``
loads, so exported weights drop into any timm-based fine-tuning code.

Final norm: the official release feeds the last encoder block straight into the
projector (feature-target rows), so there the encoder's final LayerNorm is
unused, frozen at weight 1 / bias 0, and exported as such: downstream,
``forward_features`` returns the last block's tokens standardised per token
(exactly what the official checkpoint gives timm, whose missing ``norm`` keeps
its initial 1 / 0). The pixel-target rows follow MAE, whose encoder ends with a
trained LayerNorm (docs/method.md).
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from siamim.model.init import init_patch_projection, init_token, official_init
from siamim.model.pos_embed import sincos_2d_grid


def timm_kwargs(model_cfg, img_size: int) -> dict:
    """Keyword arguments for ``timm.create_model(model_cfg.timm_name, **kwargs)``."""
    return dict(
        img_size=img_size,
        patch_size=model_cfg.patch_size,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
        mlp_ratio=model_cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
        drop_path_rate=model_cfg.drop_path,
    )


def uses_final_norm(model_cfg) -> bool:
    """True when pretraining applies the encoder's final LayerNorm (the MAE pixel-target rows)."""
    return model_cfg.target == "pixel"


def build_encoder(model_cfg, img_size: int) -> VisionTransformer:
    """A timm ViT with fixed 2-D sin-cos position embedding (cls position = 0), official init.

    ``model(x)`` on ``[B, 3, S, S]`` returns the cls feature ``[B, D]``;
    ``model.forward_features(x)`` returns ``[B, 1 + L, D]`` (L = (S/patch)^2).
    """
    enc = timm.create_model(model_cfg.timm_name, pretrained=False, **timm_kwargs(model_cfg, img_size))
    enc.apply(official_init)
    grid = img_size // model_cfg.patch_size
    with torch.no_grad():
        enc.pos_embed.copy_(sincos_2d_grid(model_cfg.embed_dim, grid).unsqueeze(0))
    enc.pos_embed.requires_grad_(False)
    init_patch_projection(enc.patch_embed.proj)
    init_token(enc.cls_token)
    if not model_cfg.train_patch_embed:
        enc.patch_embed.requires_grad_(False)
    if not uses_final_norm(model_cfg):
        enc.norm.requires_grad_(False)  # unused in pretraining: stays weight 1, bias 0
    return enc


def _with_cls(enc: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


def encode_visible(
    enc: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor | None, final_norm: bool = False
) -> torch.Tensor:
    """Encode the cls token plus the kept patches (MAE-style: masked ones are dropped).

    Args:
        images: ``[B, 3, S, S]``.
        ids_keep: ``[B, Lv]`` long indices of visible patches (row-major), or
            ``None`` to encode every patch.
        final_norm: apply the encoder's final LayerNorm (pixel-target rows only).
    Returns:
        ``[B, 1 + Lv, D]`` (``[B, 1 + L, D]`` when ``ids_keep`` is None): the last block's output.
    """
    x = enc.patch_embed(images) + enc.pos_embed[:, 1:, :]  # [B, L, D]
    if ids_keep is not None:
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, Lv, D]
    x = enc.blocks(_with_cls(enc, x))
    return enc.norm(x) if final_norm else x


def encode_with_mask_tokens(
    enc: VisionTransformer,
    images: torch.Tensor,
    mask: torch.Tensor,
    mask_token: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encode the full sequence with masked patches replaced by ``mask_token`` (SimMIM/iBOT style).

    The mask token replaces the patch embedding; the grid position embedding is
    added afterwards, so a masked token still knows where it is.

    Args:
        images: ``[B, 3, S, S]``.
        mask: bool ``[B, L]``, True = masked.
        mask_token: ``[1, 1, D]``.
        extra: optional ``[B, Q, D]`` tokens appended after the patches (view-2 queries).
    Returns:
        ``[B, 1 + L (+ Q), D]``: the last block's output (no final norm).
    """
    x = enc.patch_embed(images)  # [B, L, D]
    w = mask.unsqueeze(-1).to(x.dtype)
    x = x * (1.0 - w) + mask_token.to(x.dtype) * w
    x = _with_cls(enc, x + enc.pos_embed[:, 1:, :])  # [B, 1 + L, D]
    if extra is not None:
        x = torch.cat([x, extra.to(x.dtype)], dim=1)
    return enc.blocks(x)
