import pytest
import torch

from siamim.data.masks.center import center_mask
from tests.data.masks.helpers import components


def dist2(grid: int) -> torch.Tensor:
    """Squared distance of each patch centre to the grid centre, ``[G, G]``, in patch units."""
    r = torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2
    return r[:, None] ** 2 + r[None, :] ** 2


@pytest.mark.parametrize("grid,num", [(8, 38), (14, 118), (7, 5), (8, 1)])
def test_center_mask_is_exact_and_nearest_the_centre(grid, num):
    gen = torch.Generator().manual_seed(0)
    d = dist2(grid).flatten()
    for _ in range(10):
        mask = center_mask(grid, num, gen)
        assert mask.shape == (grid * grid,) and mask.dtype == torch.bool
        assert int(mask.sum()) == num
        # Every masked patch is at least as near the centre as every visible one.
        assert d[mask].max() <= d[~mask].min()


def test_full_rings_are_one_symmetric_block():
    # On an 8 x 8 grid the 4 central patches are at squared distance 0.5 and the next 8 at 2.5.
    for seed in range(5):
        m = center_mask(8, 12, torch.Generator().manual_seed(seed)).view(8, 8)
        assert components(m) == 1
        assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1)) and torch.equal(m, m.T)
        assert m[3:5, 3:5].all() and not m[0].any() and not m[:, 0].any()


def test_partial_ring_is_drawn_at_random():
    # 5 of a 7 x 7 grid: the centre plus 4 of the 4 at distance 1 (a full ring) -> deterministic;
    # 3 instead: the centre plus 2 of those 4, which the generator picks.
    a, b = (center_mask(7, 3, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert int(a.sum()) == int(b.sum()) == 3
    gen = torch.Generator().manual_seed(2)
    hits = sum(center_mask(7, 3, gen).view(7, 7).int() for _ in range(200))
    ring = [(2, 3), (4, 3), (3, 2), (3, 4)]
    assert hits[3, 3] == 200
    # No side of the ring is favoured: each of the 4 is picked in about half the draws (expected 100,
    # binomial std 7; bounds at +-5 std).
    assert all(65 <= int(hits[r, c]) <= 135 for r, c in ring), hits
    assert int(hits.sum()) == 600
