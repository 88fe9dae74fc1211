#!/usr/bin/env python
"""Images/s delivered to one training worker: IDX files vs Parquet (local, S3), map-style vs Ray Data streaming.

    python benchmarks/data_loading.py                          # tiny preset, 8192 images, local moto S3 server
    python benchmarks/data_loading.py --images 16384 --tasks 1,2,4 --s3 none

Each row times the batches a single training process receives (the full batch
dictionary: decoded image, two views, mask, ids_keep, geometry), after a warm-up
batch, with no model step. Map-style rows use the DataLoader of
``siamim.data.pipeline`` (``--loader-workers`` processes); streaming rows run the
Ray Data pipeline (read_parquet -> map_batches decode + views + mask with N
concurrent CPU tasks) on a local Ray instance and iterate it like a Train worker.
``--s3 auto`` starts a moto S3 server (in memory) for the S3 rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def time_batches(batches, batch_size: int, steps: int) -> tuple[float, float, float]:
    """``(first batch s, images/s after it, images/s over the whole pass incl. start-up)``.

    A stream computes ahead while the first batch is awaited, so on a small pass the rate after the
    first batch overstates the sustained rate; the whole-pass rate is the conservative figure.
    """
    start = time.perf_counter()
    it = iter(batches)
    next(it)  # start-up: loader processes / Ray Data tasks, first read
    first = time.perf_counter()
    for _ in range(steps):
        next(it)
    end = time.perf_counter()
    if hasattr(it, "close"):
        it.close()
    return first - start, steps * batch_size / (end - first), (steps + 1) * batch_size / (end - start)


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(Bucket="bench")
    return proc, f"127.0.0.1:{port}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--images", type=int, default=8192, help="training images converted and read (default 8192)")
    p.add_argument("--steps", type=int, default=None, help="timed batches per row (default: one pass)")
    p.add_argument("--loader-workers", type=int, default=1, help="DataLoader processes of the map-style rows")
    p.add_argument(
        "--rows-per-shard",
        type=int,
        default=256,
        help="shard size; a stream reads one block per shard, so this bounds its parallelism (default 256)",
    )
    p.add_argument("--tasks", default="1,2,4", help="concurrent Ray Data decode/augment tasks, comma-separated")
    p.add_argument(
        "--s3", default="auto", help="auto (start moto), none, or HOST:PORT of an S3 endpoint with bucket 'bench'"
    )
    args = p.parse_args()

    import ray

    from siamim.config import load_config
    from siamim.data.pipeline import build_loader
    from siamim.data.sources import build_source
    from siamim.orchestration.data.prepare import prepare
    from siamim.orchestration.data.streaming import build_stream, stream_batches

    tasks = [int(t) for t in args.tasks.split(",") if t]
    moto = None
    roots = {"local Parquet": str(Path(tempfile.mkdtemp(prefix="siamim-bench-")) / "fmnist")}
    if args.s3 == "auto":  # before ray.init: Ray's workers inherit the (throw-away) credentials
        moto, endpoint = start_moto()
    else:
        endpoint = None if args.s3 == "none" else args.s3
    ray.init(
        num_cpus=max(2, max(tasks) + 1),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
    )
    if endpoint:
        roots["Parquet on S3 (moto)"] = f"s3://bench/fmnist?endpoint_override={endpoint}&scheme=http"

    def quiet(*_args, **_kwargs):
        return None

    for root in roots.values():
        prepare(
            "fashion_mnist",
            None,
            root,
            rows_per_shard=args.rows_per_shard,
            row_group_rows=min(256, args.rows_per_shard),
            limit=args.images,
            log=quiet,
        )

    base = load_config(
        args.config,
        [f"data.train_subset={args.images}", "run.num_workers=1", f"data.num_workers={args.loader_workers}"],
    )
    batch = base.train.batch_size
    steps = args.steps or args.images // batch - 1
    rows = []
    try:
        cfg = base
        source = build_source("fashion_mnist", None, "train").subset(list(range(args.images)))
        rows.append(
            (
                "IDX file (local)",
                "map-style",
                f"{args.loader_workers} loader proc",
                time_batches(build_loader(source, cfg, 0, 1, 0, steps + 1), batch, steps),
            )
        )
        for name, root in roots.items():
            cfg = load_config(
                args.config,
                [
                    f"data.train_subset={args.images}",
                    "run.num_workers=1",
                    f"data.num_workers={args.loader_workers}",
                    "data.dataset=parquet",
                    f"data.root={root}",
                ],
            )
            source = build_source("parquet", root, "train").load()
            rows.append(
                (
                    name,
                    "map-style",
                    f"{args.loader_workers} loader proc",
                    time_batches(build_loader(source, cfg, 0, 1, 0, steps + 1), batch, steps),
                )
            )
        for name, root in roots.items():
            for n in tasks:
                cfg = load_config(
                    args.config,
                    [
                        f"data.train_subset={args.images}",
                        "run.num_workers=1",
                        "data.dataset=parquet",
                        f"data.root={root}",
                        "data.loader=ray_data",
                        f"data.stream_tasks={n}",
                    ],
                )
                manifest = build_source("parquet", root, "train").manifest
                spe = args.images // batch
                stream = stream_batches(
                    build_stream(cfg).iterator(),
                    cfg,
                    manifest["mean"],
                    manifest["std"],
                    0,
                    steps + 1,
                    spe,
                    world_size=1,
                )
                rows.append((name, "streaming (Ray Data)", f"{n} tasks", time_batches(stream, batch, steps)))
    finally:
        ray.shutdown()
        if moto is not None:
            moto.terminate()
    print(
        f"\nconfig {args.config}: batch {batch}, {args.images} Fashion-MNIST images, {steps} timed batches; "
        f"{os.cpu_count()} CPUs visible\n"
    )
    print(
        "| source | mode | parallelism | first batch (s) | images/s after it | images/s whole pass |\n"
        "|---|---|---|---:|---:|---:|"
    )
    for source_name, mode, par, (first, steady, whole) in rows:
        print(f"| {source_name} | {mode} | {par} | {first:.2f} | {steady:,.0f} | {whole:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
