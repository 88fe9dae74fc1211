import numpy as np
import pytest
import torch

from siamim.data.sources import eval_batch
from siamim.eval.imageset import ImageSet, load_image_set
from tests.eval.helpers import real_set, source


def test_image_set_matches_eval_batch_exactly():
    src = source("test")
    idx = np.array([0, 5, 9999, 123])
    s = load_image_set(src, 32, idx)
    assert s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.uint8
    assert torch.equal(s.labels, torch.as_tensor(src.labels[idx]))
    torch.testing.assert_close(s.batch(0, 4), eval_batch(src, idx, 32), rtol=0, atol=1e-6)


def test_subset_and_bad_input():
    s = real_set("test", 100)
    sub = s.subset([3, 1])
    assert torch.equal(sub.images[0], s.images[3]) and sub.labels[1] == s.labels[1]
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(s.images.float(), s.labels, s.mean, s.std, s.classes)
    with pytest.raises(IndexError, match="indices must lie"):
        load_image_set(source("test"), 32, [10000])
