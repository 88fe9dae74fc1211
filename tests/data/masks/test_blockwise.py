import pytest
import torch

from siamim.data.masks.blockwise import blockwise_mask
from tests.data.masks.helpers import components


@pytest.mark.parametrize("grid,num", [(8, 38), (14, 118), (8, 5)])
def test_blockwise_exact_count_and_blocks(grid, num):
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        mask = blockwise_mask(grid, num, gen, min_block=4)
        assert mask.shape == (grid * grid,) and mask.dtype == torch.bool
        assert int(mask.sum()) == num
        m = mask.view(grid, grid)
        # Contiguous blocks, not scattered patches: every masked patch has a masked 4-neighbour,
        # and there are far fewer components than masked patches.
        padded = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
        neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        assert bool((neighbours[m] > 0).all())
        assert components(m) <= max(1, num // 4)
