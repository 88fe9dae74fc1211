"""Loss plugins between predictions and targets (docs/method.md, "Loss").

One module per ``loss.type``: ``siamim/losses/<name>.py`` defines ``<name>_loss(pred, target,
neg_weight) -> {"loss": fp32 scalar, ...}``. Adding a loss is adding that file (and its test): the
names are discovered from the module files (``_``-prefixed ones are private helpers), and the config
validates ``loss.type`` against :func:`names`. This module imports no torch, so the config and the
job scripts can check a name without it; :func:`get` imports the chosen module on first use.

Every loss is decorated with ``siamim.losses._common.fp32_loss``: it runs in fp32 with autocast disabled
(so its matmuls stay fp32 under a bf16/fp16 step); the only collective is UniGrad's correlation all-reduce, taken only when a process group exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from siamim.plugins import PluginFolder

if TYPE_CHECKING:
    import torch

_PLUGINS = PluginFolder(__name__, __path__, "loss.type")


def names() -> list[str]:
    """The valid ``loss.type`` values, sorted (one per plugin module)."""
    return _PLUGINS.names()


def get(name: str) -> Callable[..., dict[str, torch.Tensor]]:
    """The loss ``fn(pred [..., D], target [..., D], neg_weight) -> {"loss", ...}`` of ``loss.type`` ``name``.

    Raises:
        ValueError: ``name`` is not one of :func:`names` (the message lists them).
    """
    return getattr(_PLUGINS.module(name), f"{name}_loss")


def compute_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, neg_weight: float) -> dict[str, torch.Tensor]:
    """The ``loss.type`` ``kind`` of ``pred``/``target`` (``[..., D]`` each); ``{"loss": fp32 scalar, ...}``."""
    return get(kind)(pred, target, neg_weight)
