"""ImageFolder trees checked before training or conversion (siamim/data/folder_check.py): real PIL files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamim.data.folder_check import ImageTreeError, check_image_tree
from siamim.data.sources import ImageFolderSource


def png_bytes(seed: int = 0, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_tree(root: Path, classes=("cat", "dog"), per_class: int = 3, splits=("train", "test")) -> Path:
    """``root/<split>/<class>/<k>.png``: small random RGB images."""
    for split in splits:
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                (root / split / cls / f"{k}.png").write_bytes(png_bytes(100 * c + k))
    return root


def test_a_good_tree_reports_its_classes_and_counts(tmp_path):
    report = check_image_tree(write_tree(tmp_path / "t"))
    assert report.classes == ["cat", "dog"] and not report.warnings
    assert report.splits["train"]["counts"] == {"cat": 3, "dog": 3} and report.checked == 12


def _no_images(root):
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "notes.txt").write_text("x")


def _flat_images(root):
    (root / "train").mkdir(parents=True)
    (root / "train" / "a.png").write_bytes(png_bytes())


def _empty_class(root):
    write_tree(root)
    (root / "train" / "owl").mkdir()


def _no_test(root):
    write_tree(root, splits=("train",))


def _test_classes_differ(root):
    write_tree(root, splits=("train",))
    write_tree(root, classes=("cat", "emu"), splits=("test",))


def _test_without_train(root):
    write_tree(root, splits=("test",))
    (root / "cat").mkdir()
    (root / "cat" / "0.png").write_bytes(png_bytes())


def _corrupt_header(root):
    write_tree(root)
    (root / "test" / "dog" / "1.png").write_bytes(b"this is not a png")


def _empty_file(root):
    write_tree(root)
    (root / "train" / "cat" / "2.png").write_bytes(b"")


CASES = {
    "no images": (_no_images, "train/cat holds no images", "add images to it or delete it"),
    "images not in class folders": (_flat_images, "has no class folders (it holds 1 images directly", "move them"),
    "empty class folder": (_empty_class, "class folder", "train/owl holds no images"),
    "no test split": (_no_test, "has no test/ or val/ tree", "/test/<class>/<image>"),
    "test classes differ": (_test_classes_differ, "other class folders than train tree", "missing: dog"),
    "test without train": (_test_without_train, "has a test/ (or val/) tree but no train/ tree", "/train/"),
    "corrupt header": (_corrupt_header, "test/dog/1.png is not a readable image", "replace it or delete it"),
    "empty file": (_empty_file, "train/cat/2.png is not a readable image", "replace it or delete it"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_trees_are_one_error_naming_the_folder_or_file_and_the_fix(tmp_path, case):
    make, where, fix = CASES[case]
    make(tmp_path / "t")
    with pytest.raises(ImageTreeError) as err:
        check_image_tree(tmp_path / "t")
    text = str(err.value)
    assert where in text and fix in text, text
    assert "\n" not in text


def test_a_missing_test_split_is_a_warning_where_not_needed(tmp_path):
    report = check_image_tree(write_tree(tmp_path / "t", splits=("train",)), need_test=False)
    assert "test" not in report.splits and "has no test/ or val/ tree" in report.warnings[0]


def test_a_single_class_tree_is_a_warning(tmp_path):
    report = check_image_tree(write_tree(tmp_path / "t", classes=("cat",)))
    assert len(report.warnings) == 1 and "single class (cat)" in report.warnings[0]
    assert "trivially 100 %" in report.warnings[0]


def test_the_sample_bounds_header_reads_and_full_decodes_every_file(tmp_path):
    root = write_tree(tmp_path / "t", per_class=10)
    good = png_bytes(7)
    (root / "train" / "dog" / "5.png").write_bytes(good[: len(good) // 2])  # header intact, pixels cut off
    assert check_image_tree(root, sample=4).checked == 8  # 4 per split
    check_image_tree(root)  # a truncated body passes the header read
    with pytest.raises(ImageTreeError, match=r"train/dog/5.png is damaged: it cannot be decoded"):
        check_image_tree(root, full=True)


def test_an_unreadable_file_met_in_training_names_itself(tmp_path):
    root = write_tree(tmp_path / "t")
    (root / "train" / "cat" / "0.png").write_bytes(b"garbage")
    source = ImageFolderSource(root / "train")
    with pytest.raises(ImageTreeError, match=r"train/cat/0.png is not a readable image"):
        source.image(0)
