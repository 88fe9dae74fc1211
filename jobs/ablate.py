#!/usr/bin/env python
"""The SiameseIM ablation grid (paper rows a-k x seeds) on Ray Tune, each trial pretrained with Ray Train,
evaluated, and tracked in MLflow as a child of one parent run that ends with the assembled table.

Local (starts an embedded Ray instance):

    python jobs/ablate.py --rows i,j --seeds 2 --steps 50 --protocols knn --name quick

On a running Ray cluster:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/ablate.py --rows all --seeds 3 --epochs 1 --storage /shared/siamim/ablation

Continue an interrupted grid (finished trials are not redone):

    python jobs/ablate.py --resume NAME --storage <same storage>
"""

from __future__ import annotations

import argparse
import sys
import time

from siamim.cli import EXIT_INTERRUPTED, add_trial_flags, job_parser, report_error, spec_flag_values

LAUNCH_TIME = time.time()


def build_parser() -> argparse.ArgumentParser:
    from siamim.eval.protocols import names as protocol_names  # the registry, without torch

    p = job_parser(
        "ablate.py",
        __doc__,
        epilog="""overrides: dotted config keys applied to every trial after the row's preset, e.g.
  data.train_subset=10000 eval.train_limit=10000 model.depth=6 (a row's switches can be overridden too)

rows: a row is configs/ablation/<row>.yaml (docs/method.md); a,b,...,k, ranges (a-e) or all;
  baselines by name: mae (configs/baselines/mae.yaml, MAE's own recipe), e.g. --rows a,mae,i.
examples:
  python jobs/ablate.py --rows all --seeds 3 --epochs 1 --dry-run
  python jobs/ablate.py --rows e,a --seeds 2 --steps 200 --protocols knn,lin --max-concurrent 2
  ray job submit --address http://127.0.0.1:8265 --working-dir . \\
      --metadata-json "{\\"git_commit\\": \\"$(git rev-parse HEAD)\\"}" -- python jobs/ablate.py --rows all \\
      --seeds 3 --epochs 1 --storage $PWD/runs/ablation --tracking-uri http://127.0.0.1:5000
  tensorboard --logdir runs/ablation/<name>          # Tune's per-trial curves
  python jobs/ablate.py --resume <name>              # after an interruption

environment:
  MLFLOW_TRACKING_URI   tracking server or store (default: sqlite:///<cwd>/mlflow.db)
  RAY_ADDRESS           Ray cluster to join (default: the job's cluster, else a new local instance)

under ray job submit the driver runs in Ray's temporary copy of the working directory: --storage and the
MLflow store must lie outside it (an absolute path the cluster keeps, s3://, a tracking server); exit 2 otherwise
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
    from siamim.errors import UserError
    from siamim.orchestration.ablation.spec import DEFAULT_PROTOCOLS, GridSpec, describe, validate_spec
    from siamim.orchestration.driver.resources import dry_run_resources
    from siamim.orchestration.driver.submitted import job_storage

    try:
        storage = job_storage(args, "runs/ablation", "grid")
        if args.resume:
            from siamim.orchestration.ablation.driver import run_ablation

            summary = run_ablation(
                resume=args.resume, storage=storage, tracking_uri=args.tracking_uri, address=args.address
            )
        else:
            spec = GridSpec(
                name=args.name or time.strftime("ablation-%Y%m%d-%H%M%S"),
                rows=args.rows,
                seeds=args.seeds,
                protocols=args.protocols or DEFAULT_PROTOCOLS,
                **spec_flag_values(args, storage),
                register=args.register,
            )
            validate_spec(spec)  # bad flags exit 2 before Ray, MLflow and torch are imported
            if args.dry_run:
                print("\n".join(describe(spec, *dry_run_resources(args.address))), flush=True)
                return 0
            from siamim.orchestration.ablation.driver import run_ablation

            summary = run_ablation(spec, tracking_uri=args.tracking_uri, address=args.address)
    except UserError as err:  # bad input: 2; trials failed after their retries: 1 (AblationFailed)
        return report_error(err, err.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    title = f"ablation grid {summary.name!r} finished: {len(summary.finished)} trials in {summary.wall_s:.0f} s"
    print("\n".join(summary.lines(title, "ablation_table.md")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
