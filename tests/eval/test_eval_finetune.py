import pytest
import torch
from timm.layers import DropPath

from siamim.eval.baselines import baseline_representation
from siamim.eval.finetune import FinetuneSettings, augment, build_classifier, finetune, param_groups
from tests.eval.helpers import cfg, chance, real_set


def test_augment_crops_and_flips_without_changing_content_scale():
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    same = augment(x, g, pad=0)
    for i in range(6):  # pad 0: each image is either itself or its mirror
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1))
    y = augment(x, torch.Generator().manual_seed(1), pad=2)
    assert y.shape == x.shape


def test_classifier_gets_layer_decay_drop_path_and_a_fresh_head():
    rep = baseline_representation("random", cfg())
    model = build_classifier(rep, 10, 32, drop_path=0.2)
    assert model.head.out_features == 10
    assert isinstance(model.blocks[-1].drop_path1, DropPath) and model.blocks[-1].drop_path1.drop_prob == pytest.approx(
        0.2
    )
    assert not model.pos_embed.requires_grad and model.patch_embed.proj.weight.requires_grad
    groups = param_groups(model, FinetuneSettings(layer_decay=0.5))
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(model.blocks) + 1))
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim == 1 for p in g["params"]))
    assert rep.encoder.head is not model.head  # the frozen representation is untouched


def test_finetune_runs_within_its_budget_and_pixels_beat_random_init():
    train, test = real_set("train", 1000), real_set("test", 300)
    s = FinetuneSettings(epochs=3, batch_size=64, blr=1e-3, warmup_epochs=0.5)
    pixels = finetune(baseline_representation("pixels", cfg()), train, test, s)
    assert pixels.steps == 3 * (1000 // 64) and len(pixels.losses) == 3
    short = finetune(
        baseline_representation("random", cfg()),
        train,
        test,
        FinetuneSettings(epochs=0.5, batch_size=64, warmup_epochs=0.1),
    )
    assert short.steps == round(0.5 * (1000 // 64)) and all(torch.isfinite(torch.tensor(short.losses)))
    assert 0.0 <= short.accuracy <= 100.0 and short.accuracy < pixels.accuracy
    assert pixels.accuracy > chance() + 40.0, pixels.accuracy  # 5x chance (measured 60-64 at this budget)
