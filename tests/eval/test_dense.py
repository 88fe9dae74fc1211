import numpy as np
import pytest
import torch

from siamim.eval.dense import FOREGROUND_THRESHOLD, build_mosaics, confusion, miou, segment, train_dense_probe
from siamim.eval.imageset import load_image_set
from tests.eval.helpers import planted, source


def test_mosaic_labels_match_the_images_placed():
    src = source("test")
    m = build_mosaics(src, 12, 32, seed=3)
    assert m.images.images.shape == (12, 3, 32, 32) and m.masks.shape == (12, 32, 32) and m.placed.shape == (12, 4)
    for k in range(12):
        for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            tile = load_image_set(src, 16, [m.placed[k, q]])  # the placed image, at quadrant size
            img = m.images.images[k, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
            lab = m.masks[k, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
            assert torch.equal(img, tile.images[0])
            item = tile.images[0].amax(0) >= FOREGROUND_THRESHOLD
            assert torch.equal(lab[item], torch.full((int(item.sum()),), int(src.labels[m.placed[k, q]]) + 1))
            assert torch.all(lab[~item] == 0)
            assert 0.05 < item.float().mean() < 0.95  # a real item: some pixels are item, some are background


def test_mosaics_are_deterministic_and_seeded():
    src = source("test")
    a, b, c = build_mosaics(src, 5, 32, seed=0), build_mosaics(src, 5, 32, seed=0), build_mosaics(src, 5, 32, seed=1)
    assert np.array_equal(a.placed, b.placed) and torch.equal(a.masks, b.masks)
    assert not np.array_equal(a.placed, c.placed)
    assert all(len(set(row)) == 4 for row in a.placed.tolist())
    with pytest.raises(ValueError, match="even"):
        build_mosaics(src, 2, 31)


def test_miou_of_known_confusion():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    conf = confusion(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    m, iou = miou(conf)
    assert iou[0] == pytest.approx(50.0) and iou[1] == pytest.approx(200 / 3) and torch.isnan(iou[2])
    assert m == pytest.approx((50.0 + 200 / 3) / 2)


def _patch_majority(masks, p=4):
    b, s, _ = masks.shape
    g = s // p
    blocks = masks.view(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
    return blocks.mode(dim=-1).values  # [B, L]


def test_dense_probe_separates_planted_patch_labels_from_noise():
    tr, te = build_mosaics(source("train"), 300, 32, seed=0), build_mosaics(source("test"), 100, 32, seed=1)
    ltr, lte = _patch_majority(tr.masks), _patch_majority(te.masks)
    kw = dict(epochs=15, batch_size=64, blr=1e-2, warmup_epochs=1)
    good_probe = train_dense_probe(planted(ltr, 32, 1.0, num_classes=11), tr.masks, 11, **kw)
    good, _ = miou(confusion(segment(good_probe, planted(lte, 32, 1.0, noise_seed=1, num_classes=11)), te.masks, 11))
    bad_probe = train_dense_probe(planted(ltr, 32, 0.0, num_classes=11), tr.masks, 11, **kw)
    bad, _ = miou(confusion(segment(bad_probe, planted(lte, 32, 0.0, noise_seed=1, num_classes=11)), te.masks, 11))
    assert 0.0 <= bad < good <= 100.0
    assert good > 45.0 and bad < 15.0, (good, bad)
