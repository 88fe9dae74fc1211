"""Image sources: indexable collections of uint8 RGB images with integer labels.

A source hides where images come from (an in-memory array such as
Fashion-MNIST, or an ImageFolder tree of files) behind two calls:
``len(source)`` and ``source.image(i) -> uint8 [3, H, W]``; ``source.labels``
is an int64 array ``[N]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from siamim.data import fashion_mnist
from siamim.data.folder_check import IMAGE_SUFFIXES, ImageTreeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSource(Protocol):
    labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int: ...

    def image(self, index: int) -> torch.Tensor: ...


class ArraySource:
    """Images held in memory as uint8 ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes, mean, std):
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not form a dataset")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        """uint8 ``[3, H, W]`` (grey images are replicated to three channels)."""
        img = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        if img.ndim == 2:
            return img.unsqueeze(0).expand(3, -1, -1)
        return img.permute(2, 0, 1)

    def subset(self, indices: np.ndarray) -> ArraySource:
        return ArraySource(self.images[indices], self.labels[indices], self.classes, self.mean, self.std)


def _has_image_suffix(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def scan_image_folder(root: str | Path) -> tuple[list[str], list[Path], list[int]]:
    """``root/<class>/**/<image>`` -> ``(classes, files, labels)`` via torchvision's folder scan.

    Classes are the sub-directories sorted by name (:func:`torchvision.datasets.folder.find_classes`);
    files are those whose suffix is in :data:`IMAGE_SUFFIXES` (any case), found by
    :func:`~torchvision.datasets.folder.make_dataset` (empty classes allowed), ordered by class and then
    by path, a file's directory parts compared before its name (``pathlib`` order: the order of
    ``sorted(class_dir.rglob("*"))``, which the Parquet shards of ``siamim/data/convert.py`` also follow).
    """
    from torchvision.datasets.folder import find_classes, make_dataset

    classes, class_to_idx = find_classes(root)
    samples = make_dataset(root, class_to_idx, is_valid_file=_has_image_suffix, allow_empty=True)
    samples = sorted((label, Path(path)) for path, label in samples)
    return classes, [path for _, path in samples], [label for label, _ in samples]


class ImageFolderSource:
    """``root/<class>/<image>`` files, classes sorted by name (torchvision's convention)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolder root {root} does not exist")
        try:
            classes, files, labels = scan_image_folder(root)
        except FileNotFoundError as err:  # torchvision's "Couldn't find any class folder"
            raise FileNotFoundError(
                f"ImageFolder root {root} has no class sub-directories (expected root/<class>/<image>)"
            ) from err
        if not files:
            raise FileNotFoundError(f"ImageFolder root {root} holds no images with suffix in {IMAGE_SUFFIXES}")
        self.classes = tuple(classes)
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> torch.Tensor:
        """uint8 ``[3, H, W]`` of file ``index``; :class:`ImageTreeError` naming the file when it cannot be read."""
        from PIL import Image

        try:
            with Image.open(self.files[index]) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as err:  # PIL: UnidentifiedImageError, OSError (truncated), SyntaxError, ...
            raise ImageTreeError(
                f"{self.files[index]} is not a readable image ({type(err).__name__}: {err}); replace it or delete "
                "it (jobs/prepare_data.py --source image_folder checks every file of a tree)"
            ) from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def build_source(dataset: str, root: str | None, split: str, cache_dir: str | None = None) -> ImageSource:
    """The source of ``split`` ('train' or 'test') for ``data.dataset`` / ``data.root``.

    ``parquet``: shards written by ``jobs/prepare_data.py`` (a directory or
    ``s3://`` URI); ``cache_dir`` (default ``$SIAMIM_DATA_CACHE``) keeps local
    copies of remote shards.

    For ``image_folder`` the root holds ``train/`` and ``test/`` (or ``val/``)
    class trees; a root without ``train/`` is itself the train tree.
    """
    if dataset == "fashion_mnist":
        images, labels = fashion_mnist.load_fashion_mnist(root, split)
        mean, std = (fashion_mnist.MEAN,) * 3, (fashion_mnist.STD,) * 3
        return ArraySource(images, labels, fashion_mnist.CLASSES, mean, std)
    if dataset == "image_folder":
        if root is None:
            raise ValueError("data.dataset=image_folder needs data.root=<directory of class folders>")
        base = Path(root)
        if split == "train":
            return ImageFolderSource(base / "train" if (base / "train").is_dir() else base)
        for name in ("test", "val"):
            if (base / name).is_dir():
                return ImageFolderSource(base / name)
        raise FileNotFoundError(f"ImageFolder root {base} has no test/ or val/ tree for evaluation")
    if dataset == "parquet":
        from siamim.data.parquet import ParquetSource

        if root is None:
            raise ValueError("data.dataset=parquet needs data.root=<directory or s3://bucket/prefix of shards>")
        return ParquetSource(root, split, cache_dir=cache_dir or os.environ.get("SIAMIM_DATA_CACHE") or None)
    raise ValueError(f"unknown data.dataset {dataset!r}; choose 'fashion_mnist', 'image_folder' or 'parquet'")


def eval_batch(source: ImageSource, indices, img_size: int) -> torch.Tensor:
    """Deterministic model input for evaluation: resize to ``img_size`` and normalise.

    Returns float32 ``[len(indices), 3, img_size, img_size]``.
    """
    from torchvision.transforms.v2 import functional as TF

    imgs = [source.image(int(i)) for i in indices]
    if all(img.shape == imgs[0].shape for img in imgs):  # one batched resize (array sources)
        x = TF.resize(torch.stack(imgs), [img_size, img_size], antialias=True)
    else:
        x = torch.stack([TF.resize(img, [img_size, img_size], antialias=True) for img in imgs])
    x = x.float().div_(255.0)
    mean = torch.tensor(source.mean).view(1, 3, 1, 1)
    std = torch.tensor(source.std).view(1, 3, 1, 1)
    return (x - mean) / std
