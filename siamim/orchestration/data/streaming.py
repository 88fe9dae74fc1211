"""Streaming training data (``data.loader=ray_data``): Parquet shards -> Ray Data -> each Train worker.

The pipeline, built in the driver and handed to ``TorchTrainer(datasets={"train": ...})``::

    read_parquet(shards; shard order shuffled per pass, seeded)        I/O tasks, any node
      -> map_batches(decode_views_batch)   decode + two views + mask, CPU tasks over the cluster's CPUs
      -> streaming_split (Ray Train)       one shard of the stream per Train worker
      -> iter_torch_batches                seeded local shuffle buffer, this rank's batch of B / world rows

Each row's views and mask come from the same code and the same per-sample seed
``sample_seed(train.seed, epoch, id)`` as the map-style loader, so an image gets
the same views in a given epoch in both modes; what differs is which images share
a step. Semantics (docs/platform.md, "Streaming mode"):

* one pass over the stream per epoch; a pass yields ``steps_per_epoch`` steps per
  worker and the rest of the pass (fewer than one global batch) is dropped;
* the order is seeded (shards per pass, rows in each worker's buffer) but not
  reproducible: blocks reach workers in completion order;
* a resume at step ``s = e * steps_per_epoch + b`` continues at step ``s`` with the
  exact schedules and starts a *fresh pass* tagged epoch ``e`` from which it trains
  ``steps_per_epoch - b`` steps; epochs ``e + 1, ...`` are full passes. So in epoch
  ``e`` about ``b`` batches' worth of images are seen twice and as many not at all.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch

from siamim.config import Config, from_dict, to_dict
from siamim.data.parquet import (
    COLUMNS,
    decode_image,
    open_root,
    read_manifest,
    shard_paths,
)
from siamim.data.pipeline import Collate, ViewPairDataset, register_loader

DATASET = "train"  # the name under TorchTrainer(datasets=...) / get_dataset_shard


@functools.lru_cache(maxsize=4)
def _config(cfg_json: str) -> Config:
    return from_dict(json.loads(cfg_json))


class _Rows:
    """The decoded images of one Ray Data batch, addressed by stable id (an ImageSource for ViewPairDataset)."""

    def __init__(self, ids, blobs):
        self.by_id = {int(i): b for i, b in zip(ids, blobs, strict=True)}

    def __len__(self) -> int:
        return len(self.by_id)

    def image(self, index: int) -> torch.Tensor:
        return decode_image(self.by_id[int(index)])


def current_pass() -> int:
    """How many passes of this Dataset finished before the one running this task (Ray Data's execution index)."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def decode_views_batch(batch: dict, cfg_json: str, base_epoch: int, subset: int | None = None) -> dict:
    """Ray Data ``map_batches`` UDF: rows ``{id, label, image bytes}`` -> stacked samples + ``id``/``epoch``.

    The epoch is ``base_epoch`` (the launch's first epoch) plus the pass index.
    """
    cfg = _config(cfg_json)
    ids = np.asarray(batch["id"], dtype=np.int64)
    keep = ids < subset if subset is not None else np.ones(len(ids), dtype=bool)
    ids, blobs = ids[keep], [b for b, k in zip(batch["image"], keep, strict=True) if k]
    epoch = base_epoch + current_pass()
    dataset = ViewPairDataset(_Rows(ids, blobs), cfg)
    samples = [dataset[(epoch, int(i))] for i in ids]
    if not samples:
        return {"id": ids, "epoch": np.zeros(0, dtype=np.int64)}
    out = {k: np.stack([s[k].numpy() for s in samples]) for k in samples[0]}
    out["id"] = ids
    out["epoch"] = np.full(len(ids), epoch, dtype=np.int64)
    return out


def build_stream(cfg: Config, start_step: int = 0, steps_per_epoch: int | None = None):
    """The Ray Data ``Dataset`` of the training stream (lazy; executes once per pass)."""
    import ray.data
    from ray.data import FileShuffleConfig

    root = cfg.data.root
    manifest = read_manifest(root)
    paths = shard_paths(root, manifest, "train")
    fs, _ = open_root(root)
    count = int(manifest["splits"]["train"]["count"])
    n = min(count, cfg.data.train_subset or count)
    spe = steps_per_epoch or n // cfg.train.batch_size
    base_epoch = start_step // spe
    # Shards in a seeded order per pass; Ray reseeds each pass from (seed, pass index).
    ds = ray.data.read_parquet(
        paths, filesystem=fs, shuffle=FileShuffleConfig(seed=cfg.train.seed * 1_000_003 + base_epoch)
    )
    ds = ds.select_columns(COLUMNS)
    kwargs = {"num_cpus": 1}
    if cfg.data.stream_tasks:
        kwargs["concurrency"] = cfg.data.stream_tasks
    return ds.map_batches(
        decode_views_batch,
        batch_size=cfg.data.stream_batch,
        batch_format="numpy",
        fn_kwargs={"cfg_json": json.dumps(to_dict(cfg)), "base_epoch": base_epoch, "subset": cfg.data.train_subset},
        **kwargs,
    )


def stream_batches(
    shard,
    cfg: Config,
    mean,
    std,
    start_step: int,
    stop_step: int,
    steps_per_epoch: int,
    world_size: int,
    trace: list | None = None,
):
    """Model batches for steps ``start_step .. stop_step - 1`` from a Ray Data iterator (one pass per epoch).

    ``shard``: ``ray.train.get_dataset_shard(...)`` or any ``DataIterator``. ``trace``:
    if given, gets ``(step, epoch, ids)`` per batch (tests, diagnostics).
    """
    per_rank = cfg.train.batch_size // world_size
    collate = Collate(mean, std)
    step = start_step
    while step < stop_step:
        epoch, done = divmod(step, steps_per_epoch)
        want = min(steps_per_epoch - done, stop_step - step)
        got = 0
        for batch in shard.iter_torch_batches(
            batch_size=per_rank,
            drop_last=True,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=cfg.train.seed * 7919 + epoch if cfg.data.shuffle_buffer else None,
        ):
            ids, tags = batch.pop("id"), batch.pop("epoch")
            if trace is not None:
                trace.append((step, tags.tolist(), ids.tolist()))
            samples = [{k: v[i] for k, v in batch.items()} for i in range(len(ids))]
            yield collate(samples)
            got += 1
            step += 1
            if got == want:
                break
        if got < want:
            raise RuntimeError(
                f"the Ray Data stream ended after {got} of epoch {epoch}'s {want} remaining steps "
                f"(batch {per_rank} per worker); the shards hold fewer rows than the manifest says?"
            )


def install_worker_loader(cfg: Config) -> None:
    """In a Ray Train worker: make ``data.loader=ray_data`` read this worker's shard of the stream."""
    import ray.train

    def factory(source, cfg, rank, world_size, start_step, total_steps):
        shard = ray.train.get_dataset_shard(DATASET)
        spe = len(source) // cfg.train.batch_size
        return stream_batches(shard, cfg, source.mean, source.std, start_step, total_steps, spe, world_size)

    register_loader("ray_data", factory)


def trainer_datasets(cfg: Config, start_step: int = 0) -> dict | None:
    """``TorchTrainer(datasets=...)`` for ``cfg``: the stream under :data:`DATASET`, or None (map-style)."""
    if cfg.data.loader != "ray_data":
        return None
    return {DATASET: build_stream(cfg, start_step)}
