"""AdamW with the release's weight-decay groups (timm's ``param_groups_weight_decay``, no skip list).

The SiameseIM release (and MAE's pretraining) decays every trainable parameter except the 1-D ones
(norm weights, biases), so the cls and mask tokens are decayed; ``optim.decay_tokens=false`` exempts
them too (the convention of DeiT/MoCo v3 fine-tuning code). docs/method.md, "Optimisation".
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

# With optim.decay_tokens=false these names get no weight decay either (fnmatch patterns).
TOKEN_PATTERNS = ("*cls_token*", "*mask_token*")


def param_groups(model: nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """The trainable parameters in a decayed group (matrices, tokens) and a non-decayed one (1-D params).

    timm's :func:`~timm.optim.param_groups_weight_decay` lists the non-decayed group first; the groups are
    returned decayed first, the order every checkpoint's optimiser state has. With ``weight_decay = 0``
    timm returns a single group (numerically the same AdamW).
    """
    skip = () if decay_tokens else TOKEN_PATTERNS
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0.0)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; lr is set per step by the loop.

    Fused (one kernel for all parameters) when they live on a CUDA device.
    """
    fused = all(p.is_cuda for p in model.parameters())
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.decay_tokens)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.optim.betas), fused=fused or None)
