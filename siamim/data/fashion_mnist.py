"""Fashion-MNIST from its four original IDX files (60k train / 10k test, 28x28 grey).

The default location is Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``). Any directory holding the same four
files (gzipped or not) works through ``data.root``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from siamim.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel statistics of the training images (scaled to [0, 1]).
MEAN = 0.2860
STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

HOW_TO_GET = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
    f"{DEFAULT_ROOT}), or download the four files train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from the "
    "Fashion-MNIST project's public mirror into a directory and pass data.root=<that directory>."
)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """Raised when the dataset files are missing; the message says how to get them."""


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}. {HOW_TO_GET}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} bytes")
    return arr.reshape(shape)


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The directory holding the four files; raises :class:`DatasetNotFoundError` if absent."""
    path = Path(root if root is not None else os.environ.get("SIAMIM_FASHION_MNIST", DEFAULT_ROOT))
    if not path.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST directory {path} does not exist. {HOW_TO_GET}")
    return path


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load one split.

    Returns:
        images: uint8 ``[N, 28, 28]`` (N = 60000 for train, 10000 for test).
        labels: int64 ``[N]`` in ``0..9`` (see :data:`CLASSES`).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = resolve_root(root)
    img_stem, lbl_stem = _FILES[split]
    images = _read_idx(_find(base, img_stem))
    labels = _read_idx(_find(base, lbl_stem)).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {base} disagree: {images.shape} images, {labels.shape} labels"
        )
    return images, labels
