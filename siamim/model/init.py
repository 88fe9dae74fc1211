"""Weight initialisation of the official SiameseIM release (docs/method.md, "Architecture").

Every ``nn.Linear``: xavier-uniform weight, zero bias; LayerNorm and BatchNorm:
weight 1, bias 0. Tokens (cls, mask) are drawn separately with normal(std 0.02)
and the patch projection's kernel like a linear layer (:func:`init_patch_projection`).
"""

from __future__ import annotations

import torch
from torch import nn


def official_init(module: nn.Module) -> None:
    """Initialise one module in place; use as ``model.apply(official_init)``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_patch_projection(conv: nn.Conv2d) -> None:
    """Xavier-uniform on the flattened ``[D, C*p*p]`` kernel (as a linear layer).

    The bias keeps PyTorch's default ``Conv2d`` init (uniform in ``±1/sqrt(C*p*p)``), as in the release,
    whose ``initialize_weights`` touches only the kernel.
    """
    w = conv.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))


def init_token(token: torch.Tensor) -> None:
    nn.init.normal_(token, std=0.02)
