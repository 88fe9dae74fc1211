"""AdamW with no weight decay on norms, biases and tokens (MAE/MoCo v3 convention), via timm's groups."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

# Besides every 1-D parameter (norms, biases), these names get no weight decay (fnmatch patterns).
NO_DECAY_PATTERNS = ("*cls_token*", "*mask_token*", "*pos_embed*")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in a decayed group (matrices) and a non-decayed one (1-D params, tokens).

    timm's :func:`~timm.optim.param_groups_weight_decay` lists the non-decayed group first; the groups are
    returned decayed first, the order every checkpoint's optimiser state has. With ``weight_decay = 0``
    timm returns a single group (numerically the same AdamW).
    """
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0.0)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; lr is set per step by the loop.

    Fused (one kernel for all parameters) when they live on a CUDA device.
    """
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=0.0, betas=tuple(cfg.optim.betas), fused=fused or None
    )
