"""``mask.type=random``: uniformly random patches (MAE's masking; ablation rows a-d)."""

from __future__ import annotations

import torch


def random_mask(grid: int, num_masked: int, gen: torch.Generator, min_block: int = 1) -> torch.Tensor:
    """Uniformly random mask (``min_block`` is unused). Returns bool ``[G*G]``, True = masked."""
    order = torch.randperm(grid * grid, generator=gen)
    mask = torch.zeros(grid * grid, dtype=torch.bool)
    mask[order[:num_masked]] = True
    return mask
