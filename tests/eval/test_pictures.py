"""siamim/eval/pictures.py: the three pictures of a representation, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from siamim.eval.baselines import baseline_representation
from siamim.eval.pictures import make_pictures, picture_indices, write_pictures
from tests.eval.helpers import cfg, source


def test_pictures_of_an_encoder_and_of_pixels(tmp_path):
    c = cfg()
    src = source("test")
    enc = baseline_representation("random", c, seed=0)
    pics, numbers = make_pictures(enc, c, src, seed=0, count=4, pairs=3)
    assert set(pics) == {"pca", "correspondence", "attention"}
    assert 0.0 <= numbers["correspondence"] <= 1.0 and 0.0 < numbers["correspondence_chance"] < 0.2
    # 32-px images upsampled to 96-px tiles: 4 images in a row, 2 rows (images, PCA)
    assert pics["pca"].size == (4 * (96 + 4) + 4, 2 * (96 + 4 + 14) + 4)
    assert pics["attention"].size[0] == (1 + c.model.num_heads) * 100 + 4
    again, _ = make_pictures(baseline_representation("random", c, seed=0), c, src, seed=0, count=4, pairs=3)
    for name in pics:
        assert np.array_equal(np.asarray(pics[name]), np.asarray(again[name])), name
    other, _ = make_pictures(enc, c, src, seed=1, count=4, pairs=3)
    assert not np.array_equal(np.asarray(other["pca"]), np.asarray(pics["pca"]))  # another seed, other images
    pixels, _ = make_pictures(baseline_representation("pixels", c), c, src, seed=0, count=4, pairs=3)
    assert set(pixels) == {"pca", "correspondence"}  # no attention without an encoder
    paths = write_pictures(pics, tmp_path / "pictures")
    assert sorted(p.name for p in paths) == ["attention.png", "correspondence.png", "pca.png"]
    assert Image.open(paths[0]).size == pics[paths[0].stem].size


def test_picture_indices_are_seeded_and_distinct():
    a = picture_indices(10000, 6, 0)
    assert a == picture_indices(10000, 6, 0) and len(set(a)) == 6 and a != picture_indices(10000, 6, 1)
    assert torch.tensor(a).max() < 10000
