"""``mask.type=blockwise``: BEiT's blockwise masking with an exact masked count (the method's mask)."""

from __future__ import annotations

import math

import torch


def blockwise_mask(
    grid: int, num_masked: int, gen: torch.Generator, min_block: int = 4, max_aspect: float = 1 / 0.3
) -> torch.Tensor:
    """BEiT-style blockwise mask with exactly ``num_masked`` masked patches.

    Rectangles of random area in ``[min_block, still needed]`` and log-uniform
    aspect ratio in ``[1/max_aspect, max_aspect]`` are placed until no block
    fits the remaining count (BEiT's algorithm). *Interpretation*: BEiT may end
    a few patches short; to keep the count exact, the remainder is filled with
    unmasked patches that touch the masked region, so blocks grow instead of
    scattering single patches.

    Returns:
        bool ``[G*G]`` (row-major), True = masked.
    """
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    count = 0
    log_aspect = (math.log(1 / max_aspect), math.log(max_aspect))
    failures = 0
    while count < num_masked and failures < 10:
        need = num_masked - count
        if need < min_block:
            break
        area = min_block + (need - min_block) * torch.rand((), generator=gen).item()
        aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * torch.rand((), generator=gen).item())
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= grid and 1 <= w <= grid):
            failures += 1
            continue
        top = int(torch.randint(0, grid - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, grid - w + 1, (1,), generator=gen))
        block = mask[top : top + h, left : left + w]
        delta = h * w - int(block.sum())
        if 0 < delta <= need:
            block.fill_(True)
            count += delta
            failures = 0
        else:
            failures += 1
    while count < num_masked:
        border = _border(mask) if count else torch.ones_like(mask)
        candidates = (border & ~mask).flatten().nonzero().squeeze(1)
        if len(candidates) == 0:  # masked region has no free border: any free patch
            candidates = (~mask).flatten().nonzero().squeeze(1)
        pick = candidates[torch.randint(0, len(candidates), (1,), generator=gen)]
        mask.view(-1)[pick] = True
        count += 1
    return mask.flatten()


def _border(mask: torch.Tensor) -> torch.Tensor:
    """Patches 4-adjacent to a masked patch. ``[G, G]`` bool."""
    out = torch.zeros_like(mask)
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out
