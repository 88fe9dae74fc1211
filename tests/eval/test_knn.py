import numpy as np
import torch

from siamim.eval.baselines import baseline_representation
from siamim.eval.knn import knn_accuracy
from siamim.eval.representation import extract
from siamim.eval.subsets import limit_indices
from tests.eval.helpers import cfg, chance, planted, real_set, source


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


def _small_sources(monkeypatch, n_train=400, n_test=150):
    """Both jobs read the same small real splits (a class-balanced slice of Fashion-MNIST)."""
    import siamim.data.sources
    import siamim.eval.runner

    small = {
        "train": source("train").subset(limit_indices(source("train").labels, n_train, 0)),
        "test": source("test").subset(limit_indices(source("test").labels, n_test, 0)),
    }
    for module in (siamim.data.sources, siamim.eval.runner):
        monkeypatch.setattr(module, "build_source", lambda dataset, root, split: small[split])


def test_pretraining_and_evaluate_jobs_compute_the_same_knn(monkeypatch):
    """One kNN path: the pretraining job's final kNN equals ``--protocols knn`` on the same data and settings."""
    from siamim.eval.knn import evaluate_knn
    from siamim.eval.representation import EncoderRepresentation
    from siamim.eval.runner import Suite, evaluate

    _small_sources(monkeypatch)
    c = cfg("eval.knn.train_subset=200", "eval.knn.test_subset=100", "eval.knn.k=10", "eval.device=cpu")
    rep = baseline_representation("random", c)
    final = evaluate_knn(rep.encoder, c, "cpu")
    (protocol,) = evaluate(EncoderRepresentation(rep.encoder), c, "knn", Suite(c, log=None), log=lambda m: None)
    assert protocol.metrics["knn_top1"] == final
    assert 100.0 * 5 / 100 <= final <= 100.0  # chance is 10 %


def test_knn_subsets_are_class_balanced_and_follow_eval_seed(monkeypatch):
    from siamim.eval.knn import knn_top1

    labels = np.repeat(np.arange(10), 30)
    seen = {}

    def features(split, rows):
        seen[split] = rows
        return planted(torch.as_tensor(labels[rows]), 16, 2.0, noise_seed=len(seen))

    s = cfg("eval.knn.train_subset=100", "eval.knn.test_subset=50").eval.knn
    top1 = knn_top1(features, labels, labels, 10, s, seed=3)
    assert np.bincount(labels[seen["train"]]).tolist() == [10] * 10
    assert np.bincount(labels[seen["test"]]).tolist() == [5] * 10
    assert np.array_equal(seen["train"], limit_indices(labels, 100, 3))
    assert np.array_equal(seen["test"], limit_indices(labels, 50, 4))
    assert top1 > 90.0


def test_final_knn_reports_progress_with_counts_and_eta():
    """The pretraining job's final kNN (minutes on 2 cores for 60k+10k images) says what it extracts, n/N, ETA."""
    from siamim.eval.knn import evaluate_knn
    from siamim.model.encoder import build_encoder

    c = cfg("eval.knn.train_subset=300", "eval.knn.test_subset=100", "eval.batch_size=64")
    lines: list[str] = []
    top1 = evaluate_knn(build_encoder(c.model, c.data.img_size), c, "cpu", log=lines.append, every=0.0)
    assert 0.0 <= top1 <= 100.0
    train = [line for line in lines if "kNN: train features (memory bank, k=20)" in line]
    assert [line.split()[7] for line in train] == ["64/300", "128/300", "192/300", "256/300", "300/300"]
    assert "img/s, ETA 0:00:0" in train[0] and train[-1].endswith("img/s, done)")
    assert any("kNN: test features (queries, k=20) 100/100" in line for line in lines)


def test_task_progress_lines_carry_rate_and_eta_and_are_throttled():
    from siamim.train.progress import TaskProgress

    lines: list[str] = []
    report = TaskProgress(lines.append, "[lin]", every=0.0)("train features", unit="img")
    for done in (10, 20, 40):
        report(done, 40)
    assert lines[0].startswith("[lin] train features 10/40 (") and " img/s, ETA " in lines[0]
    assert lines[-1].startswith("[lin] train features 40/40 (") and lines[-1].endswith("img/s, done)")
    quiet: list[str] = []
    step = TaskProgress(quiet.append, "[ft]", every=3600.0)("epoch", unit="epoch")
    for done in range(1, 6):
        step(done, 5, 0.5)
    assert len(quiet) == 2 and quiet[-1].startswith("[ft] epoch 5/5 loss 0.5000 (")  # first line, then the end
