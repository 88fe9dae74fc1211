"""AdamW with no weight decay on norms, biases and tokens (MAE/MoCo v3 convention)."""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of trainable parameters: decayed (matrices) and not (1-D params, tokens)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(tok in name for tok in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; lr is set per step by the loop.

    Fused (one kernel for all parameters) when they live on a CUDA device.
    """
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=0.0, betas=tuple(cfg.optim.betas), fused=fused or None
    )
