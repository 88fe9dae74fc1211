"""``mask.type=center``: one compact block around the grid centre (an outpainting-style mask).

The ``num_masked`` patches nearest the grid centre (Euclidean, in patch units) are masked; patches
at equal distance (a partly filled ring) are drawn at random, so the count stays exact and no side
of the ring is favoured. The visible context is the border of the view.
"""

from __future__ import annotations

import torch


def center_mask(grid: int, num_masked: int, gen: torch.Generator, min_block: int = 1) -> torch.Tensor:
    """Mask the ``num_masked`` patches nearest the centre (``min_block`` is unused).

    Returns:
        bool ``[G*G]`` (row-major), True = masked.
    """
    coords = torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2
    dist2 = (coords[:, None] ** 2 + coords[None, :] ** 2).flatten()  # [G*G], exact for half-integers
    tie_break = torch.rand(grid * grid, generator=gen, dtype=torch.float64)  # in [0, 1): orders within a ring
    # Distinct squared distances differ by at least 1 (integers, or integers + 1/2 on an even grid), so
    # adding a value below 1/8 orders patches within a ring and never reorders two rings.
    order = torch.argsort(dist2 + tie_break / 8)
    mask = torch.zeros(grid * grid, dtype=torch.bool)
    mask[order[:num_masked]] = True
    return mask
