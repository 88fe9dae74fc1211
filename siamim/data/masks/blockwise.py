"""``mask.type=blockwise``: BEiT's blockwise masking as the SiameseIM release generates it (the method's mask).

The release's rule (docs/method.md, "Views and geometry"), with an exact masked count:

1. Place blocks. Each placement makes up to 10 attempts: a target area uniform between
   ``min_block`` and the patches still needed, a log-uniform aspect ratio in
   ``[1/max_aspect, max_aspect]``, ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``;
   a block must be strictly smaller than the grid in both directions, sits at a uniform position,
   may overlap earlier blocks, and is accepted when it adds at least one and at most the still
   needed number of patches. Placement goes on (also once fewer than ``min_block`` patches are
   still needed: the area is then drawn between the two) until a placement's 10 attempts all fail.
2. Top up: the patches still needed are drawn uniformly at random from the unmasked ones
   (scattered, as the release's ``fixed_num_masking_patches``).

Randomness comes from the caller's ``torch.Generator`` (the release uses Python's ``random``), so
a mask is a pure function of the generator's state, as every other draw of the pipeline.
"""

from __future__ import annotations

import math

import torch

ATTEMPTS = 10  # attempts per block placement (the release's)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    """Uniform on ``[low, high]`` (either order, as Python's ``random.uniform``)."""
    return low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item()


def place_blocks(
    grid: int, num_masked: int, gen: torch.Generator, min_block: int = 4, max_aspect: float = 1 / 0.3
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Step 1 of the rule: the blocks' mask and the accepted blocks ``(top, left, h, w)`` in order.

    Returns:
        bool ``[G, G]`` (True = covered by a block, at most ``num_masked`` patches) and the blocks.
    """
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    blocks: list[tuple[int, int, int, int]] = []
    log_aspect = (math.log(1 / max_aspect), math.log(max_aspect))
    count = 0
    while count < num_masked:
        need = num_masked - count
        for _ in range(ATTEMPTS):
            area = _uniform(gen, min_block, need)
            aspect = math.exp(_uniform(gen, *log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (h < grid and w < grid):
                continue
            top = int(torch.randint(0, grid - h + 1, (), generator=gen))
            left = int(torch.randint(0, grid - w + 1, (), generator=gen))
            block = mask[top : top + h, left : left + w]
            delta = h * w - int(block.sum())
            if 0 < delta <= need:
                block.fill_(True)
                blocks.append((top, left, h, w))
                count += delta
                break
        else:  # ten failed attempts: the release stops placing blocks
            break
    return mask, blocks


def blockwise_mask(
    grid: int, num_masked: int, gen: torch.Generator, min_block: int = 4, max_aspect: float = 1 / 0.3
) -> torch.Tensor:
    """The release's blockwise mask with exactly ``num_masked`` masked patches (module docstring).

    Returns:
        bool ``[G*G]`` (row-major), True = masked.
    """
    mask, _ = place_blocks(grid, num_masked, gen, min_block, max_aspect)
    mask = mask.flatten()
    missing = num_masked - int(mask.sum())
    if missing > 0:
        free = (~mask).nonzero().squeeze(1)
        mask[free[torch.randperm(len(free), generator=gen)[:missing]]] = True
    return mask
