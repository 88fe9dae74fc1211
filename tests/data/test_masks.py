import pytest
import torch

from siamim.data.masks import blockwise_mask, make_mask, random_mask


def components(mask: torch.Tensor) -> int:
    """4-connected components of a [G, G] bool mask."""
    grid = mask.shape[0]
    seen = torch.zeros_like(mask)
    count = 0
    for r in range(grid):
        for c in range(grid):
            if mask[r, c] and not seen[r, c]:
                count += 1
                stack = [(r, c)]
                seen[r, c] = True
                while stack:
                    a, b = stack.pop()
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        x, y = a + da, b + db
                        if 0 <= x < grid and 0 <= y < grid and mask[x, y] and not seen[x, y]:
                            seen[x, y] = True
                            stack.append((x, y))
    return count


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


def test_random_mask_is_not_blockwise_but_exact():
    gen = torch.Generator().manual_seed(0)
    masks = [random_mask(14, 118, gen) for _ in range(20)]
    assert all(int(m.sum()) == 118 for m in masks)
    # Random masking scatters: on average it leaves more components than blockwise.
    rand_comp = sum(components(m.view(14, 14)) for m in masks)
    block_comp = sum(components(blockwise_mask(14, 118, gen).view(14, 14)) for _ in range(20))
    assert rand_comp > block_comp


def test_same_count_across_a_batch(small_cfg):
    from siamim.data.pipeline import build_loader
    from siamim.data.sources import build_source

    cfg = small_cfg()
    batch = next(iter(build_loader(build_source("fashion_mnist", None, "train"), cfg, 0, 1, 0, 1)))
    assert batch["mask"].sum(dim=1).eq(cfg.num_masked).all()
    assert batch["ids_keep"].shape == (cfg.train.batch_size, cfg.grid_size**2 - cfg.num_masked)
    # ids_keep are exactly the unmasked patches.
    rebuilt = torch.ones_like(batch["mask"])
    rebuilt.scatter_(1, batch["ids_keep"], False)
    assert torch.equal(rebuilt, batch["mask"])


def test_unknown_mask_type():
    with pytest.raises(ValueError, match="blockwise"):
        make_mask("checkerboard", 8, 10, torch.Generator())


def test_config_choices_match_the_mask_registry():
    import typing

    from siamim.config import MaskConfig
    from siamim.data.masks import MASKS

    assert set(typing.get_args(typing.get_type_hints(MaskConfig)["type"])) == set(MASKS)
