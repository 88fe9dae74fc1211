"""``mask.type=blockwise`` follows the SiameseIM release's generator (BEiT's rule) with an exact count."""

import pytest
import torch

from siamim.data.masks.blockwise import blockwise_mask, place_blocks
from tests.data.masks.helpers import components


@pytest.mark.parametrize("grid,num,min_block", [(7, 29, 4), (14, 118, 16), (8, 5, 4), (14, 75, 16)])
def test_blocks_obey_the_release_rule_and_the_count_is_exact(grid, num, min_block):
    placed_below_min = 0
    topped_up = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        covered, blocks = place_blocks(grid, num, gen, min_block=min_block)
        assert blocks, seed  # the first placement always has room
        running = torch.zeros(grid, grid, dtype=torch.bool)
        for top, left, h, w in blocks:
            assert 1 <= h < grid and 1 <= w < grid  # strictly smaller than the grid both ways
            assert 0 <= top <= grid - h and 0 <= left <= grid - w
            before = int(running.sum())
            if num - before < min_block:
                placed_below_min += 1  # still placing blocks with fewer than min_block patches left
            running[top : top + h, left : left + w] = True
            assert 0 < int(running.sum()) - before <= num - before  # adds patches, never too many
        assert torch.equal(running, covered)

        gen = torch.Generator().manual_seed(seed)  # the same draws, then the top-up
        mask = blockwise_mask(grid, num, gen, min_block=min_block)
        assert mask.shape == (grid * grid,) and mask.dtype == torch.bool
        assert int(mask.sum()) == num
        assert bool(mask.view(grid, grid)[covered].all())  # the blocks stay; the top-up only adds
        topped_up += num - int(covered.sum())
    assert placed_below_min > 0  # the release keeps placing blocks below the minimum size
    if (grid, num) != (8, 5):
        # Mostly blocks: at the recipe's sizes the top-up is a small share of the masked patches.
        assert topped_up < 0.25 * 200 * num


def test_top_up_is_scattered_uniformly_not_along_borders():
    """Where the blocks fall short, the rest are uniform over the free patches (not grown from the blocks)."""
    grid, num = 7, 29
    far = near = 0
    for seed in range(300):
        covered, _ = place_blocks(grid, num, torch.Generator().manual_seed(seed))
        mask = blockwise_mask(grid, num, torch.Generator().manual_seed(seed)).view(grid, grid)
        extra = mask & ~covered
        padded = torch.nn.functional.pad(covered.float()[None, None], (1, 1, 1, 1))[0, 0]
        touching = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) > 0
        near += int((extra & touching).sum())
        far += int((extra & ~touching).sum())
    assert far > 0 and near > 0


def test_blocks_are_contiguous_regions():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        mask = blockwise_mask(14, 118, gen, min_block=16).view(14, 14)
        assert components(mask) <= 118 // 8  # a few blocks plus a few scattered patches, not noise


def test_a_mask_is_a_pure_function_of_the_generator():
    a = blockwise_mask(7, 29, torch.Generator().manual_seed(3))
    b = blockwise_mask(7, 29, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
