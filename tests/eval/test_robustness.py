import pytest
import torch

from siamim.eval.baselines import baseline_representation
from siamim.eval.linear_probe import accuracy, predict, train_linear_probe
from siamim.eval.protocols import robust
from siamim.eval.representation import extract
from siamim.eval.robustness import CORRUPTIONS, SEVERITIES, corrupt, corrupted_accuracy, mean_corrupted_accuracy
from tests.eval.helpers import cfg, real_set


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_deterministic_in_range_and_grows_with_severity(name):
    x = real_set("test", 40).images[:40].float() / 255.0
    dist = []
    for sev in SEVERITIES:
        y = corrupt(x, name, sev, seed=0)
        assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0
        assert torch.equal(y, corrupt(x, name, sev, seed=0))
        dist.append(float((y - x).abs().mean()))
    assert dist[0] > 0.0
    assert dist[-1] > dist[0] * 1.5, dist  # severity 5 changes the images clearly more than severity 1


def test_the_protocol_runs_and_reports_every_implemented_corruption():
    assert list(robust.CORRUPTIONS) == list(CORRUPTIONS)
    for name in CORRUPTIONS:
        assert f"robust_{name}" in robust.PROTOCOL.columns and f"robust_ft_{name}" in robust.PROTOCOL.columns


def test_bad_corruption_names_and_severities_are_clear_errors():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="did you mean 'gaussian_blur'"):
        corrupt(x, "gaussian_blurr", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 0)


def test_corrupted_accuracy_of_a_probe_on_real_pixels():
    train, test = real_set("train", 1000), real_set("test", 300)
    rep = baseline_representation("pixels", cfg())
    probe = train_linear_probe(
        extract(rep, train), train.labels, 10, steps=300, batch_size=128, blr=3.2, warmup_steps=30
    )
    classify = lambda x: predict(probe, rep(x, "cls"))  # noqa: E731
    clean = corrupted_accuracy(classify, test, None)
    assert clean == pytest.approx(accuracy(predict(probe, extract(rep, test)), test.labels))
    table = {n: {s: corrupted_accuracy(classify, test, n, s, batch_size=128) for s in (1, 5)} for n in CORRUPTIONS}
    out = mean_corrupted_accuracy(table)
    assert set(out) == set(CORRUPTIONS) | {"mCA"}
    assert all(0.0 <= v <= 100.0 for v in out.values())
    assert clean > 65.0 and out["mCA"] < clean  # corruptions hurt the classifier
    assert table["gaussian_noise"][5] < table["gaussian_noise"][1] or table["occlusion"][5] < table["occlusion"][1]


@pytest.mark.parametrize("name", ["gaussian_noise", "elastic", "affine", "occlusion"])
def test_random_corruptions_follow_the_seed_and_the_batch_offset(name):
    x = real_set("test", 40).images[:16].float() / 255.0
    a = corrupt(x, name, 3, seed=0)
    assert torch.equal(a, corrupt(x.clone(), name, 3, seed=0))
    assert not torch.equal(a, corrupt(x, name, 3, seed=1))
    assert not torch.equal(a, corrupt(x, name, 3, seed=0, start=16))


def test_occlusion_is_one_grey_square_of_the_severity_area_per_image():
    x = torch.zeros(8, 3, 28, 28)
    for sev, area in zip(SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5), strict=True):
        grey = (corrupt(x, "occlusion", sev, seed=2) == 0.5).all(dim=1)  # [B, S, S]
        side = round(28 * area**0.5)
        assert grey.flatten(1).sum(1).tolist() == [side * side] * 8
        rows, cols = grey.any(dim=2), grey.any(dim=1)  # [B, S]: a square, not scattered pixels
        assert rows.sum(1).tolist() == [side] * 8 and cols.sum(1).tolist() == [side] * 8
