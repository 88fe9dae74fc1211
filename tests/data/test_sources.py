import numpy as np
import pytest
import torch
from PIL import Image

from siamim.data.sources import build_source, eval_batch


def test_fashion_mnist_is_real_and_complete():
    train = build_source("fashion_mnist", None, "train")
    test = build_source("fashion_mnist", None, "test")
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train.labels).tolist() == [6000] * 10
    img = train.image(0)
    assert img.shape == (3, 28, 28) and img.dtype == torch.uint8 and img.float().std() > 10
    x = eval_batch(test, [0, 1, 2], 32)
    assert x.shape == (3, 3, 32, 32)


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{k}.png")
    train = build_source("image_folder", str(tmp_path), "train")
    test = build_source("image_folder", str(tmp_path), "test")
    assert train.classes == ("cat", "dog") and len(train) == 6 and len(test) == 6
    assert train.image(4).shape == (3, 20, 24) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="data.root"):
        build_source("image_folder", None, "train")
