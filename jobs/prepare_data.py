#!/usr/bin/env python
"""Convert Fashion-MNIST or an ImageFolder tree into Parquet shards, locally or on S3, with Ray Data.

    python jobs/prepare_data.py --source fashion_mnist --out data/fmnist
    python jobs/prepare_data.py --source image_folder --root /data/tree \\
        --out 's3://bucket/datasets/tree?endpoint_override=127.0.0.1:9000&scheme=http'

    # on a cluster (the conversion tasks spread over its CPUs):
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/prepare_data.py ...

Train from the result with `data.dataset=parquet data.root=<out>`. Credentials come from the AWS
environment only, never the URI. Docs: docs/data.md ("Convert once", "Credentials and endpoints").
"""

from __future__ import annotations

import argparse
import sys

from siamim.cli import EXIT_BAD_INPUT, job_parser

OUT_FIX = (
    "an absolute path on a disk the cluster keeps or an s3:// URI "
    "(dev stack: 's3://siamim/datasets/<name>?endpoint_override=127.0.0.1:9000&scheme=http')"
)


def build_parser() -> argparse.ArgumentParser:
    p = job_parser("prepare_data.py", __doc__, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--source", required=True, choices=["fashion_mnist", "image_folder"])
    p.add_argument(
        "--root",
        default=None,
        help="input directory (Fashion-MNIST IDX files or root/<class>/<image>, "
        "with train/ and test|val/ sub-trees if split); Fashion-MNIST defaults to the Debian package",
    )
    p.add_argument(
        "--out", required=True, help="output directory or s3://bucket/prefix[?endpoint_override=H:P&scheme=http]"
    )
    p.add_argument("--rows-per-shard", type=int, default=10_000, help="images per Parquet file (default 10000)")
    p.add_argument(
        "--row-group-rows",
        type=int,
        default=1_000,
        help="images per Parquet row group: the unit a streaming reader fetches (default 1000)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each split (smoke tests)")
    p.add_argument("--concurrency", type=int, default=None, help="parallel conversion tasks (default: all CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already at --out")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from siamim.errors import UserError
    from siamim.orchestration.driver.submitted import check_lasting

    try:
        # under ray job submit: not in Ray's temporary copy of the working directory (before torch is imported)
        check_lasting(args.out, f"--out {args.out}", OUT_FIX)
        from siamim.orchestration.data.prepare import prepare
        from siamim.orchestration.driver.cluster import ensure_ray, shutdown_embedded_ray

        if args.source == "image_folder":  # before Ray starts: the tree, every file's header (seconds)
            from siamim.data.folder_check import check_image_tree

            for warning in check_image_tree(args.root, sample=None, need_test=False, what="--root").warnings:
                print(f"[prepare_data] warning: {warning}", flush=True)
        ensure_ray(args.address)
        try:
            manifest = prepare(
                args.source,
                args.root,
                args.out,
                rows_per_shard=args.rows_per_shard,
                row_group_rows=args.row_group_rows,
                limit=args.limit,
                overwrite=args.overwrite,
                concurrency=args.concurrency,
                check_tree=False,
            )
        finally:
            shutdown_embedded_ray()
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"prepare_data: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    counts = ", ".join(f"{s} {v['count']}" for s, v in manifest["splits"].items())
    print(f"[prepare_data] done: {counts}; train with data.dataset=parquet data.root='{args.out}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
