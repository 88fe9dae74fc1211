"""Conversion of an image source into Parquet shards, one shard per task (no Ray here).

:func:`plan_tasks` splits every split of a source into shard tasks (plain dicts,
cheap to ship to Ray Data workers); :func:`convert_shard` runs one of them: reads
its images, encodes them (PNG for arrays; an ImageFolder's PNG/JPEG file bytes are
kept as they are, other formats become PNG), writes one Parquet file with row
groups of ``row_group_rows`` and returns its statistics for the manifest
(rows, bytes, per-channel pixel sums, a digest of every row). The manifest itself
is assembled by the caller and written last (``siamim.orchestration.data.prepare``).
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from siamim.data import fashion_mnist
from siamim.data.folder_check import ImageTreeError
from siamim.data.fs import write_bytes
from siamim.data.parquet import (
    SCHEMA,
    decode_array,
    encode_png,
    join,
    open_root,
    row_digest,
)
from siamim.data.sources import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD

KEEP_AS_IS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


@functools.lru_cache(maxsize=2)
def _fashion_split(root: str | None, split: str):
    return fashion_mnist.load_fashion_mnist(root, split)


def _folder_tree(root: Path, split: str) -> Path | None:
    if split == "train":
        return root / "train" if (root / "train").is_dir() else root
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    return None


def describe_source(kind: str, root: str | None) -> dict:
    """``{"classes", "mean", "std", "splits": {split: [items]}, "fingerprint"}`` of a source.

    Items are row indices (Fashion-MNIST) or ``[relative path, label]`` (ImageFolder).
    The fingerprint covers the input bytes (Fashion-MNIST files) or the file list with
    sizes (ImageFolder), so a re-run on the same input is recognised.
    """
    h = hashlib.sha256(kind.encode())
    if kind == "fashion_mnist":
        base = fashion_mnist.resolve_root(root)
        splits = {}
        for split, stems in fashion_mnist._FILES.items():
            for stem in stems:
                path = fashion_mnist._find(base, stem)
                h.update(path.name.encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
            images, _ = _fashion_split(str(base), split)
            splits[split] = list(range(len(images)))
        return {
            "classes": list(fashion_mnist.CLASSES),
            "mean": [fashion_mnist.MEAN] * 3,
            "std": [fashion_mnist.STD] * 3,
            "splits": splits,
            "fingerprint": h.hexdigest(),
            "root": str(base),
        }
    if kind == "image_folder":
        if root is None or not Path(root).is_dir():
            raise FileNotFoundError(f"--root {root!r} is not a directory of class folders")
        base = Path(root).resolve()
        train = _folder_tree(base, "train")
        classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"ImageFolder root {train} has no class sub-directories (root/<class>/<image>)")
        splits = {}
        for split in ("train", "test"):
            tree = _folder_tree(base, split)
            if tree is None:
                continue
            items = []
            for label, name in enumerate(classes):
                for path in sorted((tree / name).rglob("*")):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        rel = str(path.relative_to(base))
                        items.append([rel, label])
                        h.update(f"{rel}:{label}:{path.stat().st_size};".encode())
            if not items:
                raise FileNotFoundError(f"ImageFolder tree {tree} holds no images with suffix in {IMAGE_SUFFIXES}")
            splits[split] = items
        return {
            "classes": classes,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "splits": splits,
            "fingerprint": h.hexdigest(),
            "root": str(base),
        }
    raise ValueError(f"unknown source {kind!r}; choose fashion_mnist or image_folder")


def plan_tasks(kind: str, source: dict, out: str, rows_per_shard: int, row_group_rows: int) -> list[dict]:
    """One task per shard: ``{"kind", "root", "out", "split", "index", "first_id", "items", "path", ...}``."""
    tasks = []
    for split, items in source["splits"].items():
        for index, start in enumerate(range(0, len(items), rows_per_shard)):
            tasks.append(
                {
                    "kind": kind,
                    "root": source["root"],
                    "out": out,
                    "split": split,
                    "index": index,
                    "first_id": start,
                    "items": items[start : start + rows_per_shard],
                    "path": f"{split}/part-{index:05d}.parquet",
                    "row_group_rows": row_group_rows,
                }
            )
    return tasks


def _encode_items(task: dict) -> tuple[list[int], list[bytes], np.ndarray, np.ndarray, int]:
    """(labels, encoded images, per-channel pixel sum, sum of squares, pixel count) of a task's items."""
    labels, blobs = [], []
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    if task["kind"] == "fashion_mnist":
        images, all_labels = _fashion_split(task["root"], task["split"])
        for i in task["items"]:
            img = images[i]
            blobs.append(encode_png(img))
            labels.append(int(all_labels[i]))
            x = img.astype(np.float64) / 255.0
            total += x.sum()
            total_sq += (x * x).sum()
            count += x.size
    else:
        base = Path(task["root"])
        for rel, label in task["items"]:
            path = base / rel
            data = path.read_bytes()
            try:
                arr = decode_array(data)  # [H, W, 3], exactly what ImageFolderSource yields
            except Exception as err:  # PIL: truncated or damaged data; the driver names the file (convert_shard)
                raise ImageTreeError(
                    f"{path} is damaged: it cannot be decoded ({type(err).__name__}: {err}); replace it or delete it"
                ) from None
            if path.suffix.lower() not in KEEP_AS_IS:
                data = encode_png(arr)
            blobs.append(data)
            labels.append(int(label))
            x = arr.reshape(-1, 3).astype(np.float64) / 255.0
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += x.shape[0]
    return labels, blobs, total, total_sq, count


def convert_shard(task: dict) -> dict:
    """Write one shard; returns its manifest entry plus pixel sums for the mean/std.

    An image that cannot be decoded writes nothing: the entry's ``"bad"`` names it (``""``: none),
    for the driver to report in one line instead of a Ray Data traceback.
    """
    try:
        labels, blobs, total, total_sq, count = _encode_items(task)
    except ImageTreeError as err:
        return {
            "split": task["split"],
            "index": task["index"],
            "path": task["path"],
            "rows": 0,
            "bytes": 0,
            "digest": "",
            "pixel_sum": [0.0] * 3,
            "pixel_sumsq": [0.0] * 3,
            "pixel_count": 0,
            "bad": str(err),
        }
    ids = list(range(task["first_id"], task["first_id"] + len(blobs)))
    table = pa.table(
        {"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()), "image": pa.array(blobs, pa.binary())},
        schema=SCHEMA,
    )
    buf = io.BytesIO()
    # Encoded images do not compress further; row groups of row_group_rows let readers stream small pieces.
    pq.write_table(table, buf, row_group_size=task["row_group_rows"], compression="NONE")
    payload = buf.getvalue()
    fs, base = open_root(task["out"])
    write_bytes(fs, join(fs, base, task["path"]), payload)
    return {
        "split": task["split"],
        "index": task["index"],
        "path": task["path"],
        "rows": len(blobs),
        "bytes": len(payload),
        "digest": row_digest(ids, labels, blobs),
        "pixel_sum": total.tolist(),
        "pixel_sumsq": total_sq.tolist(),
        "pixel_count": count,
        "bad": "",
    }
