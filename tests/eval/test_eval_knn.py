from siamim.eval.baselines import baseline_representation
from siamim.eval.knn import knn_accuracy
from siamim.eval.representation import extract
from tests.eval.helpers import cfg, chance, planted, real_set


def _knn(rep, train, test):
    return knn_accuracy(extract(rep, train), train.labels, extract(rep, test), test.labels, 10, k=20)


def test_knn_raw_pixels_beat_random_init_features_on_real_images():
    train, test = real_set("train", 1000), real_set("test", 300)
    pixels = _knn(baseline_representation("pixels", cfg()), train, test)
    random = _knn(baseline_representation("random", cfg()), train, test)
    assert 0.0 <= random <= 100.0 and 0.0 <= pixels <= 100.0
    assert pixels > 65.0  # ~84% with the full bank; this bank has 100 images per class
    assert pixels > random + 5.0


def test_knn_on_planted_class_information_beats_chance_by_far():
    train, test = real_set("train", 1000), real_set("test", 300)
    good = knn_accuracy(planted(train.labels, 32, 1.5), train.labels, planted(test.labels, 32, 1.5, noise_seed=1), test.labels, 10)
    none = knn_accuracy(planted(train.labels, 32, 0.0), train.labels, planted(test.labels, 32, 0.0, noise_seed=1), test.labels, 10)
    assert good > 90.0 and abs(none - chance()) < 8.0
