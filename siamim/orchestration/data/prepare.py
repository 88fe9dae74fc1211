"""Dataset conversion on Ray Data: a source -> Parquet shards + manifest (``jobs/prepare_data.py``).

One Ray Data task per shard (:func:`siamim.data.convert.convert_shard`), spread
over whatever CPUs the cluster has; the driver then writes ``manifest.json``
last. Re-running on the same input with the same options finds the manifest's
source fingerprint and does nothing; shards without a manifest (a conversion
that died) are removed and written again, never taken for a dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

import pyarrow.fs as pafs

from siamim.data.convert import convert_shard, describe_source, plan_tasks
from siamim.data.folder_check import ImageTreeError, check_image_tree
from siamim.data.fs import write_bytes
from siamim.data.parquet import (
    FORMAT,
    MANIFEST,
    ParquetDataError,
    display,
    join,
    open_root,
)


def _existing_manifest(fs: pafs.FileSystem, base: str) -> dict | None:
    try:
        with fs.open_input_stream(join(fs, base, MANIFEST)) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None


def _clear(fs: pafs.FileSystem, base: str, splits) -> None:
    for split in splits:
        path = join(fs, base, split)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)


def prepare(
    kind: str,
    root: str | None,
    out: str,
    rows_per_shard: int = 10_000,
    row_group_rows: int = 1_000,
    limit: int | None = None,
    overwrite: bool = False,
    concurrency: int | None = None,
    log=print,
    check_tree: bool = True,
) -> dict:
    """Convert ``kind`` (``fashion_mnist`` | ``image_folder``) at ``root`` into shards under ``out``.

    ``limit``: the first N images of each split (smoke tests). Needs Ray to be
    initialised (``ray.init`` or a submitted job). Returns the manifest. An ImageFolder tree is
    checked first (:func:`siamim.data.folder_check.check_image_tree`, every file's header;
    ``check_tree=False``: the caller did), and every file is decoded by the conversion tasks: a
    bad tree or file raises :class:`~siamim.data.folder_check.ImageTreeError` naming it.
    """
    import ray.data

    if rows_per_shard < 1 or row_group_rows < 1:
        raise ValueError("--rows-per-shard and --row-group-rows must be >= 1")
    if kind == "image_folder" and check_tree:  # every file's header before any task; the tasks decode every file
        report = check_image_tree(root, sample=None, need_test=False, what="--root")
        for warning in report.warnings:
            log(f"[prepare_data] warning: {warning}")
    source = describe_source(kind, root)
    if limit is not None:
        source["splits"] = {s: items[:limit] for s, items in source["splits"].items()}
    options = {"rows_per_shard": rows_per_shard, "row_group_rows": row_group_rows, "limit": limit}
    fingerprint = hashlib.sha256(f"{source['fingerprint']}:{json.dumps(options, sort_keys=True)}".encode()).hexdigest()
    fs, base = open_root(out)
    try:
        existing = _existing_manifest(fs, base)
    except OSError as err:
        raise ParquetDataError(
            f"--out {display(out)}: cannot reach the storage ({str(err).splitlines()[0][:300]})"
        ) from err
    if existing is not None:
        if existing.get("source", {}).get("fingerprint") == fingerprint and not overwrite:
            log(
                f"[prepare_data] {display(out)} already holds this dataset (manifest content hash "
                f"{existing['content_hash'][:12]}); nothing to do"
            )
            return existing
        if not overwrite:
            raise ParquetDataError(
                f"--out {display(out)} already holds a different dataset (manifest from "
                f"{existing.get('source', {}).get('kind')}); pass --overwrite or another --out"
            )
        fs.delete_file(join(fs, base, MANIFEST))  # from here on the root is not a dataset until the new manifest
    _clear(fs, base, list(source["splits"]) + ["train", "test"])

    tasks = plan_tasks(kind, source, out, rows_per_shard, row_group_rows)
    started = time.time()
    log(
        f"[prepare_data] {kind} -> {display(out)}: {sum(len(v) for v in source['splits'].values())} images in "
        f"{len(tasks)} shards (Ray Data, {concurrency or 'auto'} concurrent tasks)"
    )
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    map_kwargs = {"num_cpus": 1}
    if concurrency:
        map_kwargs["concurrency"] = concurrency
    results = ds.map(convert_shard, **map_kwargs).take_all()
    results.sort(key=lambda r: (r["split"], r["index"]))
    bad = [r["bad"] for r in results if r.get("bad")]
    if bad:
        more = f" ({len(bad) - 1} more shards hold such files; fix them all and re-run)" if len(bad) > 1 else ""
        raise ImageTreeError(f"{bad[0]}{more}; no manifest written")

    splits, digests = {}, hashlib.sha256()
    for r in results:
        entry = splits.setdefault(r["split"], {"count": 0, "shards": []})
        entry["count"] += r["rows"]
        entry["shards"].append({"path": r["path"], "rows": r["rows"], "bytes": r["bytes"], "digest": r["digest"]})
        digests.update(f"{r['split']}:{r['path']}:{r['digest']};".encode())
    for split, items in source["splits"].items():
        if splits.get(split, {}).get("count") != len(items):
            raise ParquetDataError(
                f"conversion of split {split!r} wrote {splits.get(split, {}).get('count')} rows, "
                f"expected {len(items)}; no manifest written"
            )
    train = [r for r in results if r["split"] == "train"]
    n = sum(r["pixel_count"] for r in train)
    pixel_mean = [sum(r["pixel_sum"][c] for r in train) / n for c in range(3)]
    pixel_std = [
        math.sqrt(max(0.0, sum(r["pixel_sumsq"][c] for r in train) / n - pixel_mean[c] ** 2)) for c in range(3)
    ]
    manifest = {
        "format": FORMAT,
        "created": time.time(),
        "source": {"kind": kind, "fingerprint": fingerprint, "options": options},
        "encoding": "png" if kind == "fashion_mnist" else "png/jpeg (original file bytes where PNG/JPEG)",
        "classes": source["classes"],
        "mean": source["mean"],  # the normalisation training uses (the source's convention)
        "std": source["std"],
        "pixel_mean": pixel_mean,  # measured on the train split, in [0, 1] units
        "pixel_std": pixel_std,
        "splits": splits,
        "content_hash": digests.hexdigest(),
    }
    write_bytes(fs, join(fs, base, MANIFEST), json.dumps(manifest, indent=1).encode())  # last: the dataset exists
    log(
        f"[prepare_data] wrote {len(results)} shards + {MANIFEST} in {time.time() - started:.1f} s; "
        f"content hash {manifest['content_hash'][:12]}"
    )
    return manifest
