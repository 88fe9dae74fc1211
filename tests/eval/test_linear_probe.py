import math

import pytest
import torch

from siamim.eval.baselines import baseline_representation
from siamim.eval.linear_probe import LinearProbe, accuracy, per_class_accuracy, predict, train_linear_probe
from siamim.eval.representation import extract_many
from siamim.train.schedules import lr_at
from tests.eval.helpers import cfg, chance, planted, real_set

FAST = dict(steps=300, batch_size=128, blr=3.2, warmup_steps=30)  # lr 1.6


def test_head_is_batchnorm_without_affine_then_linear():
    probe = LinearProbe(8, 3)
    bn, fc = probe
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert isinstance(fc, torch.nn.Linear) and fc.out_features == 3 and float(fc.bias.detach().abs().sum()) == 0.0


def test_probe_schedule_is_the_training_schedule_warm_up_from_zero_then_half_cosine():
    """One lr_at (siamim.train.schedules) for pretraining, probes and FT: MAE's warm-up from lr 0 at step 0."""
    import siamim.eval.finetune
    import siamim.eval.linear_probe

    assert siamim.eval.linear_probe.lr_at is lr_at and siamim.eval.finetune.lr_at is lr_at
    assert lr_at(0, 100, 10, 1.0) == 0.0
    assert lr_at(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)


def test_probe_on_planted_class_information_beats_chance_by_far():
    train, test = real_set("train", 1000), real_set("test", 300)
    probe = train_linear_probe(planted(train.labels, 64, 0.6), train.labels, 10, **FAST)
    good = accuracy(predict(probe, planted(test.labels, 64, 0.6, noise_seed=1)), test.labels)
    probe = train_linear_probe(planted(train.labels, 64, 0.0), train.labels, 10, **FAST)
    none = accuracy(predict(probe, planted(test.labels, 64, 0.0, noise_seed=1)), test.labels)
    assert good > 85.0, good
    assert abs(none - chance()) < 8.0, none


def test_probe_on_real_pixels_beats_random_init_cls_and_both_pools_run():
    train, test = real_set("train", 1000), real_set("test", 300)
    accs = {}
    for name in ("pixels", "random"):
        rep = baseline_representation(name, cfg())
        ftr, fte = extract_many(rep, train, ("cls", "mean")), extract_many(rep, test, ("cls", "mean"))
        for pool in ("cls", "mean"):
            probe = train_linear_probe(ftr[pool], train.labels, 10, **FAST)
            accs[name, pool] = accuracy(predict(probe, fte[pool]), test.labels)
    assert all(0.0 <= a <= 100.0 for a in accs.values())
    assert accs["pixels", "cls"] > 65.0, accs
    assert accs["pixels", "cls"] > accs["random", "cls"] + 5.0, accs


def test_per_class_accuracy_and_bad_shapes():
    pred, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    pc = per_class_accuracy(pred, labels, 4)
    assert pc[:3].tolist() == [100.0, 50.0, 100.0] and math.isnan(pc[3])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        train_linear_probe(torch.zeros(4, 2, 2), torch.zeros(4, dtype=torch.long), 2)
