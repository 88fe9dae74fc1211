"""ViT encoder: timm's ``VisionTransformer`` with fixed sin-cos position
embedding, an optionally frozen patch projection, and a masked forward.

Using timm's class itself (not a look-alike) means the encoder's state dict is
exactly what ``timm.create_model(cfg.model.timm_name, num_classes=0, ...)``
loads, so exported weights drop into any timm-based fine-tuning code.
"""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

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


def build_encoder(model_cfg, img_size: int) -> VisionTransformer:
    """A timm ViT with fixed 2-D sin-cos position embedding (cls position = 0).

    ``model(x)`` on ``[B, 3, S, S]`` returns the cls feature ``[B, D]``;
    ``model.forward_features(x)`` returns ``[B, 1 + L, D]`` (L = (S/patch)^2).
    """
    enc = timm.create_model(model_cfg.timm_name, pretrained=False, **timm_kwargs(model_cfg, img_size))
    grid = img_size // model_cfg.patch_size
    with torch.no_grad():
        enc.pos_embed.copy_(sincos_2d_grid(model_cfg.embed_dim, grid).unsqueeze(0))
    enc.pos_embed.requires_grad_(False)
    # MAE/MoCo v3 initialisation: patch projection like a linear layer, cls token small normal.
    w = enc.patch_embed.proj.weight.data
    torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    torch.nn.init.normal_(enc.cls_token, std=0.02)
    if not model_cfg.train_patch_embed:
        enc.patch_embed.requires_grad_(False)
    return enc


def encode_visible(enc: VisionTransformer, images: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
    """Encode the cls token plus the kept patches (MAE-style: masked ones are dropped).

    Args:
        images: ``[B, 3, S, S]``.
        ids_keep: ``[B, Lv]`` long indices of visible patches (row-major), or
            ``None`` to encode every patch.
    Returns:
        ``[B, 1 + Lv, D]`` (``[B, 1 + L, D]`` when ``ids_keep`` is None), after the final norm.
    """
    x = enc.patch_embed(images)  # [B, L, D]
    x = x + enc.pos_embed[:, 1:, :]
    if ids_keep is not None:
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, Lv, D]
    cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = enc.blocks(x)
    return enc.norm(x)
