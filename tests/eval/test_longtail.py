import numpy as np
import pytest

from siamim.eval.longtail import longtail_counts, longtail_subset
from tests.eval.helpers import source


def test_counts_run_from_head_to_head_over_imbalance():
    c = longtail_counts(10, 6000, 100.0)
    assert c[0] == 6000 and c[-1] == 60 and np.all(np.diff(c) < 0)
    np.testing.assert_allclose(c, np.round(6000 * 100.0 ** (-np.arange(10) / 9)))
    with pytest.raises(ValueError, match="imbalance"):
        longtail_counts(10, 6000, 0.5)


def test_long_tailed_subset_of_the_training_set_has_the_promised_counts_and_is_deterministic():
    labels = source("train").labels
    idx, order = longtail_subset(labels, 100.0, seed=0)
    counts = np.bincount(labels[idx], minlength=10)
    assert sorted(order.tolist()) == list(range(10))
    assert counts[order].tolist() == longtail_counts(10, 6000, 100.0).tolist()
    assert counts[order[-1]] == 60 and counts[order[0]] == 6000
    assert len(np.unique(idx)) == len(idx) == counts.sum()
    idx2, order2 = longtail_subset(labels, 100.0, seed=0)
    assert np.array_equal(idx, idx2) and np.array_equal(order, order2)
    idx3, order3 = longtail_subset(labels, 100.0, seed=1)
    assert not np.array_equal(idx, idx3)


def test_missing_class_is_a_clear_error():
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        longtail_subset(np.array([0, 1, 0, 1, 3]), 10.0, num_classes=4)
