"""Parquet shards: conversion round trip, idempotence, map-style equality with the source, streaming semantics.

Conversion and streaming run on a real local Ray instance (Ray Data); the images
are Fashion-MNIST's first 512 and an ImageFolder tree the test writes itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from siamim.config import ConfigError, load_config
from siamim.data.parquet import MANIFEST, ParquetDataError, ParquetSource, open_root
from siamim.data.pipeline import Collate, ViewPairDataset, build_loader
from siamim.data.sources import ImageFolderSource, build_source
from tests.conftest import SMALL

N = 512


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        repo = str(Path(__file__).resolve().parents[2])
        ray.init(
            address="local",  # a new instance, never what a stale /tmp/ray/ray_current_cluster names
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": repo, "RAY_AUTH_MODE": "disabled"}},
        )
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def fmnist_shards(local_ray, tmp_path_factory):
    from siamim.orchestration.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "fmnist"
    manifest = prepare("fashion_mnist", None, str(out), rows_per_shard=200, row_group_rows=64, limit=N)
    return out, manifest


def test_fashion_mnist_round_trip(fmnist_shards):
    out, manifest = fmnist_shards
    assert json.loads((out / MANIFEST).read_text()) == manifest  # written, and what prepare returned
    assert manifest["splits"]["train"]["count"] == N and manifest["splits"]["test"]["count"] == N
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [200, 200, 112]
    assert pq.ParquetFile(out / "train" / "part-00000.parquet").metadata.num_row_groups == 4  # 64-row groups
    assert len(manifest["content_hash"]) == 64 and len(manifest["classes"]) == 10
    assert 0.2 < manifest["pixel_mean"][0] < 0.4 and 0.25 < manifest["pixel_std"][0] < 0.45
    for split in ("train", "test"):
        shards, source = build_source("parquet", str(out), split), build_source("fashion_mnist", None, split)
        assert len(shards) == N
        assert np.array_equal(shards.labels, source.labels[:N])
        for i in range(N):
            assert torch.equal(shards.image(i), source.image(i)), (split, i)


def _write_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("val", 2)):
        for cls in ("cat", "dog", "owl"):
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                kind = k % 4
                if kind == 0:
                    img.save(root / split / cls / f"{k}.png")
                elif kind == 1:
                    img.save(root / split / cls / f"{k}.jpg", quality=90)
                elif kind == 2:
                    img.save(root / split / cls / f"{k}.bmp")
                else:
                    img.convert("L").save(root / split / cls / f"{k}.png")


def test_image_folder_round_trip(local_ray, tmp_path):
    from siamim.orchestration.data.prepare import prepare

    _write_tree(tmp_path / "tree")
    manifest = prepare("image_folder", str(tmp_path / "tree"), str(tmp_path / "out"), rows_per_shard=4)
    assert manifest["classes"] == ["cat", "dog", "owl"]
    for split, tree in (("train", "train"), ("test", "val")):
        source, shards = ImageFolderSource(tmp_path / "tree" / tree), ParquetSource(str(tmp_path / "out"), split)
        assert len(shards) == len(source) == (15 if split == "train" else 6)
        assert np.array_equal(shards.labels, source.labels)
        for i in range(len(source)):
            assert torch.equal(shards.image(i), source.image(i)), (split, i, source.files[i])


def test_rerun_is_a_no_op_and_a_half_written_root_is_not_a_dataset(fmnist_shards, tmp_path):
    from siamim.orchestration.data.prepare import prepare

    out, manifest = fmnist_shards
    shard = out / "train" / "part-00000.parquet"
    before = shard.stat().st_mtime_ns
    again = prepare("fashion_mnist", None, str(out), rows_per_shard=200, row_group_rows=64, limit=N)
    assert again["content_hash"] == manifest["content_hash"] and shard.stat().st_mtime_ns == before
    with pytest.raises(ParquetDataError, match="different dataset"):
        prepare("fashion_mnist", None, str(out), rows_per_shard=100, row_group_rows=64, limit=N)

    # A conversion that died before its manifest: shards present, no dataset.
    half = tmp_path / "half"
    (half / "train").mkdir(parents=True)
    (half / "train" / "part-00000.parquet").write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ParquetDataError, match="no manifest.json"):
        ParquetSource(str(half), "train")
    redone = prepare("fashion_mnist", None, str(half), rows_per_shard=200, row_group_rows=64, limit=N)
    assert redone["content_hash"] == manifest["content_hash"]
    assert ParquetSource(str(half), "train").image(0).shape == (3, 28, 28)


def test_map_style_batches_equal_the_original_files(fmnist_shards):
    """Same images and ids -> the same per-sample seeds -> bit-identical batches (so resume stays exact)."""
    out, _ = fmnist_shards
    cfg = load_config("tiny", [*SMALL, "data.dataset=parquet", f"data.root={out}"])
    idx = load_config("tiny", SMALL)
    shards = build_source("parquet", str(out), "train")
    source = build_source("fashion_mnist", None, "train").subset(np.arange(N))
    for rank in (0, 1):
        a = list(build_loader(shards, cfg, rank, 2, 13, 17))
        b = list(build_loader(source, idx, rank, 2, 13, 17))
        assert len(a) == len(b) == 4
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_stream_resume_semantics(fmnist_shards):
    """docs/platform.md "Streaming mode": one pass per epoch; a resume at e*spe+b trains spe-b steps of a
    fresh epoch-e pass, then full passes; each image's views are the map-style ones for its (epoch, id)."""
    from siamim.orchestration.data.streaming import build_stream, stream_batches

    out, manifest = fmnist_shards
    cfg = load_config(
        "tiny",
        [
            *SMALL,
            "data.dataset=parquet",
            f"data.root={out}",
            "data.loader=ray_data",
            "data.train_subset=256",
            "data.shuffle_buffer=64",
            "data.stream_batch=32",
        ],
    )
    spe, start, stop = 256 // 32, 11, 19  # resume in epoch 1 after b=3 of its 8 steps
    trace: list = []
    batches = list(
        stream_batches(
            build_stream(cfg, start).iterator(),
            cfg,
            manifest["mean"],
            manifest["std"],
            start,
            stop,
            spe,
            world_size=1,
            trace=trace,
        )
    )
    assert [s for s, _, _ in trace] == list(range(start, stop))
    epochs = {s: set(tags) for s, tags, _ in trace}
    assert all(epochs[s] == {1} for s in range(11, 16)) and all(epochs[s] == {2} for s in range(16, 19))
    for e in (1, 2):  # within a pass no image repeats; ids come from the subset
        ids = [i for s, tags, step_ids in trace if tags[0] == e for i in step_ids]
        assert len(ids) == len(set(ids)) and max(ids) < 256
    # The streamed batch is the map-style batch of the same (epoch, ids).
    shards = ParquetSource(str(out), "train")
    _, tags, ids = trace[-1]
    samples = [ViewPairDataset(shards, cfg)[(tags[0], i)] for i in ids]
    expected = Collate(shards.mean, shards.std)(samples)
    got = batches[-1]
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_credentials_and_config_errors(tmp_path):
    with pytest.raises(ParquetDataError, match="must not carry credentials"):
        open_root("s3://AKIAXXX:secret@bucket/prefix")
    with pytest.raises(ConfigError, match="data.loader"):
        load_config("tiny", ["data.loader=ray_data"])
    with pytest.raises(ConfigError, match="data.root"):
        load_config("tiny", ["data.dataset=parquet"])
    with pytest.raises(ParquetDataError, match="no manifest.json"):
        ParquetSource(str(tmp_path), "train")
    cfg = load_config("tiny", [*SMALL, "data.dataset=parquet", f"data.root={tmp_path}", "data.loader=ray_data"])
    with pytest.raises(RuntimeError, match="inside Ray Train workers"):
        build_loader(None, cfg, 0, 1, 0, 1)


def test_unreachable_s3_fails_in_seconds_naming_the_endpoint():
    import time

    from siamim.errors import UserError
    from siamim.orchestration.driver.preflight import check_data
    from tests.helpers import free_port

    port = free_port()  # nothing listens there
    root = f"s3://bucket/shards?endpoint_override=127.0.0.1:{port}&scheme=http"
    cfg = load_config("tiny", ["data.dataset=parquet", f"data.root={root}"])
    start = time.time()
    with pytest.raises(UserError, match=f"http://127.0.0.1:{port}"):
        check_data(cfg)
    assert time.time() - start < 30


def test_pretrain_and_evaluate_from_shards(fmnist_shards, tmp_path):
    """Plain-PyTorch training from the shards, then jobs/evaluate.py reads the manifest's train/test splits."""
    import subprocess
    import sys

    from siamim.train import pretrain

    out, _ = fmnist_shards
    cfg = load_config(
        "tiny",
        [*SMALL, "data.dataset=parquet", f"data.root={out}", "train.max_steps=1", f"train.output_dir={tmp_path}/run"],
    )
    pretrain(cfg, verbose=False)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [
            sys.executable,
            str(repo / "jobs" / "evaluate.py"),
            "--checkpoint",
            str(tmp_path / "run" / "checkpoint.pt"),
            "--protocols",
            "knn",
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"train {N} / test {N} images" in proc.stdout  # the shards' splits, not the 60k/10k IDX files
    assert "knn_top1" in (tmp_path / "eval" / "evaluation.csv").read_text()
