"""Mask plugins for view 1, generated on the CPU (docs/method.md, "Views and geometry").

One module per ``mask.type``: ``siamim/data/masks/<name>.py`` defines
``<name>_mask(grid, num_masked, gen, min_block) -> bool [G*G]`` (row-major, True = masked).
Every mask hides exactly ``num_masked`` of the ``G*G`` patches, so every image in a batch keeps the
same number of visible tokens (the encoder gathers them into one dense tensor).

Adding a mask is adding that file (and its test): the names are discovered from the module files
(``_``-prefixed ones are private helpers) and the config validates ``mask.type`` against
:func:`names`. This module imports no torch; :func:`get` imports the chosen module on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from siamim.plugins import PluginFolder

if TYPE_CHECKING:
    import torch

_PLUGINS = PluginFolder(__name__, __path__, "mask.type")


def names() -> list[str]:
    """The valid ``mask.type`` values, sorted (one per plugin module)."""
    return _PLUGINS.names()


def get(name: str) -> Callable[..., torch.Tensor]:
    """The mask ``fn(grid, num_masked, gen, min_block) -> bool [G*G]`` of ``mask.type`` ``name``.

    Raises:
        ValueError: ``name`` is not one of :func:`names` (the message lists them).
    """
    return getattr(_PLUGINS.module(name), f"{name}_mask")


def make_mask(kind: str, grid: int, num_masked: int, gen: torch.Generator, min_block: int = 4) -> torch.Tensor:
    """The ``mask.type`` ``kind`` mask of a ``grid x grid`` patch grid. Returns bool ``[G*G]``, True = masked."""
    return get(kind)(grid, num_masked, gen, min_block=min_block)
