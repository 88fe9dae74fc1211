import numpy as np
import pytest
import torch

from siamim.eval.baselines import baseline_representation
from siamim.eval.fewshot import fewshot_accuracy, seed_statistics
from siamim.eval.imageset import load_image_set
from siamim.eval.representation import extract
from siamim.eval.subsets import class_balanced_subset
from tests.eval.helpers import cfg, chance, planted, real_set, source


def test_one_percent_subset_has_60_per_class_and_is_deterministic():
    labels = source("train").labels
    a = class_balanced_subset(labels, 0.01, seed=0)
    assert len(a) == 600
    assert np.bincount(labels[a], minlength=10).tolist() == [60] * 10
    assert len(np.unique(a)) == 600 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, class_balanced_subset(labels, 0.01, seed=0))
    b = class_balanced_subset(labels, 0.01, seed=1)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="fraction"):
        class_balanced_subset(labels, 0.0, seed=0)


def test_logistic_regression_separates_planted_from_no_information():
    labels = torch.arange(10).repeat(20)  # 20 labelled samples per class
    test = real_set("test", 300).labels
    good = fewshot_accuracy(planted(labels, 64, 0.8), labels, planted(test, 64, 0.8, noise_seed=1), test, 10)
    none = fewshot_accuracy(planted(labels, 64, 0.0), labels, planted(test, 64, 0.0, noise_seed=1), test, 10)
    assert good > 90.0 and abs(none - chance()) < 8.0, (good, none)


def test_one_percent_protocol_on_real_images_pixels_beat_random_init():
    src, test = source("train"), real_set("test", 300)
    accs = {}
    for name in ("pixels", "random"):
        rep = baseline_representation(name, cfg())
        runs = []
        for seed in (0, 1):
            images = load_image_set(src, 32, class_balanced_subset(src.labels, 0.01, seed))
            runs.append(
                fewshot_accuracy(extract(rep, images), images.labels, extract(rep, test), test.labels, 10, max_iter=60)
            )
        accs[name] = seed_statistics(runs)
        assert 0.0 <= accs[name]["min"] <= accs[name]["mean"] <= accs[name]["max"] <= 100.0
        assert accs[name]["std"] >= 0.0
    assert accs["pixels"]["mean"] > 65.0 and accs["pixels"]["mean"] > accs["random"]["mean"] + 5.0, accs
