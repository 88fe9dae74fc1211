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
    good = knn_accuracy(
        planted(train.labels, 32, 1.5), train.labels, planted(test.labels, 32, 1.5, noise_seed=1), test.labels, 10
    )
    none = knn_accuracy(
        planted(train.labels, 32, 0.0), train.labels, planted(test.labels, 32, 0.0, noise_seed=1), test.labels, 10
    )
    assert good > 90.0 and abs(none - chance()) < 8.0


def test_final_knn_reports_progress_with_counts_and_eta():
    """The pretraining job's final kNN (minutes on 2 cores for 60k+10k images) says what it extracts, n/N, ETA."""
    from siamim.config import set_value
    from siamim.eval.knn import evaluate_knn
    from siamim.model.encoder import build_encoder

    c = cfg()
    for key, value in (("eval.knn_train_subset", 300), ("eval.knn_test_subset", 100), ("eval.batch_size", 64)):
        set_value(c, key, value)
    lines: list[str] = []
    top1 = evaluate_knn(build_encoder(c.model, c.data.img_size), c, "cpu", log=lines.append, every=0.0)
    assert 0.0 <= top1 <= 100.0
    assert lines[0].startswith("[siamim] kNN: features of 300 train (memory bank) + 100 test images")
    train = [line for line in lines if "kNN: train features" in line]
    assert [line.split()[4] for line in train] == ["64/300", "128/300", "192/300", "256/300", "300/300"]
    assert "img/s, ETA 0:00:0" in train[0] and train[-1].endswith("ETA done)")
    assert any("kNN: test features 100/100" in line for line in lines)


def test_protocol_progress_lines_carry_an_eta():
    from siamim.eval.runner import Progress

    lines: list[str] = []
    report = Progress(lines.append, "lin", every=0.0)("train features")
    for done in (10, 20, 40):
        report(done, 40)
    assert lines[0].startswith("[lin] train features 10/40 ETA ") and lines[-1] == "[lin] train features 40/40"
