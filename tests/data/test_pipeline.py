import pytest
import torch

from siamim.data.pipeline import StepBatchSampler, build_loader
from siamim.data.sources import build_source


def rank_keys(world: int, rank: int, start: int = 0, total: int = 7) -> list[list[tuple[int, int]]]:
    """Per-step ``(epoch, index)`` keys of ``rank``: 100 images, global batch 24 (4 steps per epoch)."""
    return list(StepBatchSampler(100, 24, rank, world, seed=3, start_step=start, total_steps=total))


@pytest.mark.parametrize("world", [2, 4, 8])
def test_ranks_together_see_the_single_process_batch_in_order(world):
    single = rank_keys(1, 0)
    per_rank = [rank_keys(world, r) for r in range(world)]
    assert len(single) == 7  # steps 0-6: crosses the epoch boundary after step 3
    assert {e for step in single for e, _ in step} == {0, 1}
    for step, global_batch in enumerate(single):
        parts = [per_rank[r][step] for r in range(world)]
        assert all(len(p) == 24 // world for p in parts)
        # Rank r holds the r-th equal slice: concatenated in rank order they are the global batch.
        assert [k for p in parts for k in p] == global_batch
    # Within an epoch no image repeats; across epochs the order changes.
    epoch0 = [i for step in single[:4] for _, i in step]
    assert len(set(epoch0)) == 96
    assert [i for _, i in single[4]] != [i for _, i in single[0]]


def test_resumed_sampler_continues_the_same_steps():
    assert rank_keys(2, 1, start=3) == rank_keys(2, 1)[3:]


def test_rank_batches_hold_the_single_process_samples(small_cfg):
    """Not just the keys: each sample's views and mask depend on (seed, epoch, index) only."""
    cfg = small_cfg("train.batch_size=8")
    source = build_source("fashion_mnist", None, "train")
    single = next(iter(build_loader(source, cfg, 0, 1, 0, 1)))
    parts = [next(iter(build_loader(source, cfg, r, 2, 0, 1))) for r in range(2)]
    for key in ("view1", "view2", "mask", "ids_keep", "geometry"):
        assert torch.equal(torch.cat([p[key] for p in parts]), single[key]), key
    # Different images do differ, so the comparison can fail.
    assert not torch.equal(parts[0]["view1"], parts[1]["view1"])


def test_same_count_across_a_batch(small_cfg):
    cfg = small_cfg()
    batch = next(iter(build_loader(build_source("fashion_mnist", None, "train"), cfg, 0, 1, 0, 1)))
    assert batch["mask"].sum(dim=1).eq(cfg.num_masked).all()
    assert batch["ids_keep"].shape == (cfg.train.batch_size, cfg.grid_size**2 - cfg.num_masked)
    # ids_keep are exactly the unmasked patches.
    rebuilt = torch.ones_like(batch["mask"])
    rebuilt.scatter_(1, batch["ids_keep"], False)
    assert torch.equal(rebuilt, batch["mask"])
