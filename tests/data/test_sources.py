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
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{k}.png"
                )
    train = build_source("image_folder", str(tmp_path), "train")
    test = build_source("image_folder", str(tmp_path), "test")
    assert train.classes == ("cat", "dog") and len(train) == 6 and len(test) == 6
    assert train.image(4).shape == (3, 20, 24) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="data.root"):
        build_source("image_folder", None, "train")


def write_png(path, rng, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_image_folder_order_and_suffixes(tmp_path):
    """Class order, file order (a nested sub-folder included) and suffix filter of the ImageFolder scan."""
    rng = np.random.default_rng(1)
    for rel in ("b/2.png", "b/10.PNG", "b/sub/0.png", "b/sub-x/0.png", "b/z.jpeg", "a/x.png", "c/deep/er/1.webp"):
        write_png(tmp_path / rel, rng)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / ".png").write_text("no suffix: not an image")
    (tmp_path / "empty").mkdir()  # a class without images is still a class
    source = build_source("image_folder", str(tmp_path), "train")
    assert source.classes == ("a", "b", "c", "empty")
    got = [str(p.relative_to(tmp_path)) for p in source.files]
    # pathlib order: directory parts before the name, so b/sub/0.png precedes b/sub-x/0.png and b/z.jpeg
    # (torchvision's os.walk order puts a folder's own files first: b/z.jpeg before both sub-folders).
    assert got == ["a/x.png", "b/10.PNG", "b/2.png", "b/sub/0.png", "b/sub-x/0.png", "b/z.jpeg", "c/deep/er/1.webp"]
    assert got == [
        str(p.relative_to(tmp_path))
        for c in source.classes
        for p in sorted((tmp_path / c).rglob("*"))
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    ]
    assert source.labels.tolist() == [0, 1, 1, 1, 1, 1, 2]
    img = source.image(3)
    assert img.shape == (3, 6, 5) and img.dtype == torch.uint8
    assert torch.equal(img, torch.from_numpy(np.asarray(Image.open(source.files[3]))).permute(2, 0, 1))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_source("image_folder", str(tmp_path / "missing"), "train")
    (tmp_path / "flat.png").write_text("")
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        build_source("image_folder", str(tmp_path), "train")
    (tmp_path / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        build_source("image_folder", str(tmp_path), "train")
