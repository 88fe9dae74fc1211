"""Checks of an ImageFolder tree before anything trains on it or converts it (torch-free: PIL and a listing).

``root/train/<class>/<image>`` and ``root/test/<class>/<image>`` (or ``val/``; a root without
``train/`` is itself the train tree, as :func:`siamim.data.sources.build_source` reads it).
:func:`check_image_tree` lists both trees and reads image headers; every problem that would
otherwise surface inside a Ray worker (or after the whole training, at the final kNN) is an
:class:`ImageTreeError` naming the folder or file and the fix, and degenerate datasets (one
class) come back as warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from siamim.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # the files an ImageFolder tree holds (any case)
SAMPLE = 256  # header reads per split in the launch preflight (evenly spread over the sorted files)


class ImageTreeError(UserError, ValueError):
    """The tree cannot be trained on or converted; the message names the folder or file and the fix."""


@dataclass
class TreeReport:
    """What :func:`check_image_tree` found: per split its tree, classes and image counts.

    Attributes:
        splits: ``{"train": {"tree": Path, "counts": {class: n_images}}, "test": {...}}``.
        checked: image headers read (``full``: every file).
        warnings: degenerate but usable data (one class), one sentence each.
    """

    root: Path
    splits: dict[str, dict] = field(default_factory=dict)
    checked: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.splits["train"]["counts"])


def split_tree(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root`` (``train``: ``root/train`` or ``root``; else ``test/`` or ``val/``)."""
    if split == "train":
        return root / "train" if (root / "train").is_dir() else root
    return next((root / name for name in ("test", "val") if (root / name).is_dir()), None)


def images_of(folder: Path) -> list[Path]:
    """Image files (suffix in :data:`IMAGE_SUFFIXES`, any case) under ``folder``, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_header(path: Path) -> None:
    """Open ``path`` as an image (PIL reads the header only); :class:`ImageTreeError` naming it otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header parsed
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageTreeError(
            f"{path} is not a readable image ({type(err).__name__}: {err}); replace it or delete it"
        ) from None


def decode(path: Path, data: bytes | None = None) -> None:
    """Decode all of ``path`` (or its bytes ``data``); :class:`ImageTreeError` naming it when that fails."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for truncated or bad data
        raise ImageTreeError(
            f"{path} is damaged: it cannot be decoded ({type(err).__name__}: {err}); replace it or delete it"
        ) from None


def _class_counts(tree: Path, what: str) -> tuple[dict[str, int], list[Path]]:
    classes = sorted(p for p in tree.iterdir() if p.is_dir())
    if not classes:
        loose = [p for p in tree.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = f" (it holds {len(loose)} images directly: move them into {tree}/<class>/)" if loose else ""
        raise ImageTreeError(f"{what} {tree} has no class folders{hint}; an ImageFolder tree is {tree}/<class>/<image>")
    counts, files = {}, []
    for folder in classes:
        found = images_of(folder)
        if not found:
            raise ImageTreeError(
                f"class folder {folder} holds no images (suffix {', '.join(IMAGE_SUFFIXES)}); add images "
                "to it or delete it"
            )
        counts[folder.name] = len(found)
        files += found
    return counts, files


def check_image_tree(
    root: str | Path | None,
    *,
    sample: int | None = SAMPLE,
    full: bool = False,
    need_test: bool = True,
    what: str = "data.root",
) -> TreeReport:
    """Check the ImageFolder tree at ``root``; returns what it found, raises :class:`ImageTreeError`.

    Lists both splits (class folders, image files) and reads the header of ``sample`` files per
    split, evenly spread (``None``: every file). ``full``: decode every file (the check
    ``jobs/prepare_data.py`` makes). ``need_test``: a missing ``test/`` (or ``val/``) tree is an
    error (training's final kNN reads it); otherwise a warning. The test tree must have the train
    tree's class folders (labels are class indices by name). ``what``: the setting or flag that
    named ``root``, for the message when it is not a directory.
    """
    if root is None or not Path(root).is_dir():
        raise ImageTreeError(
            f"{what}={str(root) if root is not None else None!r} is not a directory; give the folder holding "
            "train/<class>/<image> and test/<class>/<image>"
        )
    base = Path(root)
    report = TreeReport(base)
    train = split_tree(base, "train")
    if train == base and any((base / name).is_dir() for name in ("test", "val")):
        raise ImageTreeError(
            f"{base} has a test/ (or val/) tree but no train/ tree: put the training classes in {base}/train/"
        )
    for split in ("train", "test"):
        tree = split_tree(base, split)
        if tree is None:
            msg = (
                f"{base} has no test/ or val/ tree; the final kNN evaluation needs one: "
                f"{base}/test/<class>/<image>, with the class folders of {train}"
            )
            if need_test:
                raise ImageTreeError(msg)
            report.warnings.append(msg)
            continue
        counts, files = _class_counts(tree, f"{split} tree")
        if split == "test" and set(counts) != set(report.splits["train"]["counts"]):
            ours = set(report.splits["train"]["counts"])
            missing, extra = sorted(ours - set(counts)), sorted(set(counts) - ours)
            raise ImageTreeError(
                f"test tree {tree} has other class folders than train tree {train}"
                + (f"; missing: {', '.join(missing[:5])}" if missing else "")
                + (f"; not in train: {', '.join(extra[:5])}" if extra else "")
                + "; both need the same class folder names"
            )
        picked = files if sample is None or full or len(files) <= sample else _spread(files, sample)
        for path in picked:
            if full:
                decode(path)
            else:
                read_header(path)
        report.checked += len(picked)
        report.splits[split] = {"tree": tree, "counts": counts}
    if len(report.classes) == 1:
        report.warnings.append(
            f"{train} has a single class ({report.classes[0]}): kNN and linear accuracy are trivially 100 %; "
            "add more class folders for a meaningful evaluation"
        )
    return report


def _spread(files: list[Path], n: int) -> list[Path]:
    step = (len(files) - 1) / (n - 1) if n > 1 else 0.0
    return [files[round(i * step)] for i in range(n)]


__all__ = ["ImageTreeError", "TreeReport", "check_image_tree", "decode", "read_header", "split_tree"]
