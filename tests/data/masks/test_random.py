import torch

from siamim.data.masks.blockwise import blockwise_mask
from siamim.data.masks.random import random_mask
from tests.data.masks.helpers import components


def test_random_mask_is_not_blockwise_but_exact():
    gen = torch.Generator().manual_seed(0)
    masks = [random_mask(14, 118, gen) for _ in range(20)]
    assert all(int(m.sum()) == 118 for m in masks)
    # Random masking scatters: on average it leaves more components than blockwise.
    rand_comp = sum(components(m.view(14, 14)) for m in masks)
    block_comp = sum(components(blockwise_mask(14, 118, gen).view(14, 14)) for _ in range(20))
    assert rand_comp > block_comp
