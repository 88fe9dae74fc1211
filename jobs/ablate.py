#!/usr/bin/env python
"""The SiameseIM ablation grid (paper rows a-k x seeds) on Ray Tune, each trial pretrained with Ray Train,
evaluated, and tracked in MLflow as a child of one parent run that ends with the assembled table.
"""

from __future__ import annotations

import argparse
import sys
import time

from siamim.cli import add_trial_flags, experiment_main, job_parser, spec_flag_values

LAUNCH_TIME = time.time()


def build_parser() -> argparse.ArgumentParser:
    from siamim.eval.protocols import names as protocol_names  # the registry, without torch

    p = job_parser(
        "ablate.py",
        __doc__,
        epilog="""rows (configs/ablation/<row>.yaml): a,b,...,k, ranges (a-e), all, or a baseline by name (mae).
overrides: dotted config keys for every trial after the row's preset, e.g. data.train_subset=10000 model.depth=6.
Everything else (storage, MLflow, resuming, ray job submit's working copy, exit codes): docs/ablation.md

examples:
  python jobs/ablate.py --rows all --seeds 3 --epochs 1 --dry-run
  python jobs/ablate.py --rows e,a --seeds 2 --steps 200 --protocols knn,lin --max-concurrent 2
  ray job submit --address http://127.0.0.1:8265 --working-dir . \\
      --metadata-json "{\\"git_commit\\": \\"$(git rev-parse HEAD)\\"}" -- python jobs/ablate.py --rows all \\
      --seeds 3 --epochs 1 --storage $PWD/runs/ablation --tracking-uri http://127.0.0.1:5000
  tensorboard --logdir runs/ablation/<name>          # Tune's per-trial curves
  python jobs/ablate.py --resume <name>              # after an interruption
""",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides for every trial")
    p.add_argument(
        "--rows", default="all", help="comma list of rows a..k, ranges (a-e), all (default), or a baseline (mae)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per row: train.seed = 0..N-1 (default 1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="pretraining steps per trial (train.max_steps)")
    budget.add_argument("--epochs", type=float, help="pretraining epochs per trial (train.epochs; default: preset)")
    p.add_argument(
        "--protocols",
        default=None,
        help=f"evaluation protocols of every trial, any of jobs/evaluate.py's ({','.join(protocol_names())} "
        "or all; default knn,lin,fewshot,dense)",
    )
    add_trial_flags(p)
    p.add_argument(
        "--max-retries", type=int, default=1, help="retries of a failed trial before it is FAILED (default 1)"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="root of Tune results, checkpoints and the table: directory or "
        "s3://bucket/prefix[?endpoint_override=host:9000&scheme=http] "
        "(default runs/ablation)",
    )
    p.add_argument("--experiment", default="siamim-ablation", help="MLflow experiment (default siamim-ablation)")
    p.add_argument(
        "--name", help="grid name: Tune experiment directory and MLflow parent run (default ablation-<timestamp>)"
    )
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="continue grid NAME under --storage with Tune's restore: finished trials are kept, unfinished ones run",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trials, per-trial resources and the estimated packing; start nothing",
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="log each trial's encoder (encoder/, timm's folder) and register it as a version of the MLflow "
        "model NAME-<row> (tags row, seed, grid); evaluate with jobs/evaluate.py --checkpoint models:/NAME-<row>/<v>",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from siamim.orchestration.ablation.spec import DEFAULT_PROTOCOLS, GridSpec

    def build(storage: str) -> GridSpec:
        return GridSpec(
            name=args.name or time.strftime("ablation-%Y%m%d-%H%M%S"),
            rows=args.rows,
            seeds=args.seeds,
            protocols=args.protocols or DEFAULT_PROTOCOLS,
            **spec_flag_values(args, storage),
            register=args.register,
        )

    def summary_lines(summary) -> list[str]:
        title = f"ablation grid {summary.name!r} finished: {len(summary.finished)} trials in {summary.wall_s:.0f} s"
        return summary.lines(title, "ablation_table.md")

    return experiment_main(args, GridSpec, build, "siamim.orchestration.ablation.driver:run_ablation", summary_lines)


if __name__ == "__main__":
    sys.exit(main())
