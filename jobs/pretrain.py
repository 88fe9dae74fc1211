#!/usr/bin/env python
"""SiameseIM pretraining on Ray Train, tracked in MLflow, resumable (``--help`` for examples; docs/platform.md)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from siamim.cli import EXIT_INTERRUPTED, job_parser, report_error

LAUNCH_TIME = time.time()

EXIT_TERMINATED = 128 + signal.SIGTERM


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(
        "pretrain.py",
        "SiameseIM pretraining on Ray Train (data-parallel TorchTrainer), tracked in MLflow.",
        epilog="""overrides: dotted config keys, e.g. train.max_steps=200 model.depth=6 optim.blr=5e-4
             (the same keys as the YAML presets in configs/ and the MLflow params)

examples:
  python jobs/pretrain.py                                   # configs/tiny.yaml, 2 CPU workers, local Ray
  python jobs/pretrain.py --config tiny train.max_steps=50 data.train_subset=2048
  python jobs/pretrain.py --num-workers 4 --use-gpu --storage s3://bucket/siamim?endpoint_override=minio:9000
  python jobs/pretrain.py --resume latest --more-steps 200  # train the latest run 200 steps longer
  python jobs/submit.py --address http://127.0.0.1:8265 -- --config tiny \\
      --storage $PWD/runs/ray --tracking-uri http://127.0.0.1:5000   # ray job submit, tagged with the git commit

environment: MLFLOW_TRACKING_URI (default sqlite:///<cwd>/mlflow.db), RAY_ADDRESS, RAY_AUTH_MODE=disabled
(clusters without tokens). Under ray job submit, --storage and the MLflow store lie outside the working
directory (exit 2 otherwise). More: docs/platform.md
""",
    )
    parser.add_argument("--config", metavar="PRESET", help="preset name (tiny) or YAML path; default: tiny")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (run.num_workers)")
    parser.add_argument(
        "--use-gpu", action="store_true", default=None, help="one or more GPUs per worker (run.use_gpu)"
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per worker (run.gpus_per_worker; implies --use-gpu)"
    )
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (run.cpus_per_worker)")
    parser.add_argument("--storage", help="checkpoint storage: directory or URI, e.g. s3://bucket/prefix (run.storage)")
    parser.add_argument("--experiment", help="MLflow experiment name (run.experiment)")
    parser.add_argument("--name", help="run name: Ray Train run directory and MLflow run name (run.name)")
    parser.add_argument(
        "--max-failures", type=int, help="worker-group restarts from the last checkpoint (run.max_failures)"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS / the job's cluster / local)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="NAME",
        help="continue run NAME (default: the latest run) under --storage from its last intact "
        "checkpoint, in the same MLflow run; overrides apply on top of its stored config",
    )
    parser.add_argument(
        "--more-steps",
        type=int,
        metavar="N",
        help="with --resume: train N steps past the checkpoint; past the end of the plan the plan "
        "grows and the lr re-warms to the re-planned cosine (docs/platform.md)",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the exported encoder (MLflow artifact encoder/, timm's folder) as a new version of "
        "the MLflow registered model NAME; evaluate it with jobs/evaluate.py --checkpoint models:/NAME/<version>",
    )
    parser.add_argument(
        "--checkpoint-pictures",
        action="store_true",
        help="log the feature pictures (PCA, correspondence, attention) at every checkpoint, not only at the "
        "end: MLflow's image slider then shows them change over training",
    )
    parser.add_argument(
        "--wait-for-resources",
        type=float,
        default=300.0,
        metavar="S",
        help="on a running cluster that cannot fit the workers yet, wait S seconds for it to grow, "
        "then fail (default 300; -1: for ever). A local Ray instance that cannot fit fails at once",
    )
    return parser


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as dotted overrides (after the positional ones, so flags win)."""
    out = list(args.overrides)
    for flag, key in (
        ("num_workers", "run.num_workers"),
        ("cpus_per_worker", "run.cpus_per_worker"),
        ("storage", "run.storage"),
        ("experiment", "run.experiment"),
        ("name", "run.name"),
        ("max_failures", "run.max_failures"),
    ):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    if args.gpus_per_worker is not None:
        out += [f"run.gpus_per_worker={args.gpus_per_worker}", "run.use_gpu=true"]
    if args.use_gpu:
        out.append("run.use_gpu=true")
    return out


def _terminate(signum, frame):
    raise SystemExit(EXIT_TERMINATED)  # unwinds through the launcher, which marks the MLflow run KILLED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the process's own entry point (not a test calling main): SIGTERM -> clean exit
        signal.signal(signal.SIGTERM, _terminate)
    from siamim.config import load_config
    from siamim.errors import UserError
    from siamim.orchestration.driver.cluster import shutdown_embedded_ray
    from siamim.orchestration.driver.launch import run_pretraining
    from siamim.orchestration.driver.submitted import check_lasting, check_tracking_lasting

    overrides = cli_overrides(args)
    try:
        cfg = load_config(args.config or "tiny", overrides)
        # under ray job submit: nothing inside Ray's temporary copy of the working directory (exit 2)
        given = args.storage or any(o.startswith("run.storage=") for o in args.overrides)
        check_lasting(cfg.run.storage, f"--storage {cfg.run.storage}{'' if given else ' (the default)'}")
        check_tracking_lasting(args.tracking_uri)
        resume = False if args.resume is None else args.resume
        if resume is not False and args.config:
            print(
                f"[siamim] note: --resume uses the run's stored config; --config {args.config} only sets "
                "defaults for the storage location",
                flush=True,
            )
        # On resume, storage/tracking flags locate the run; the rest override its stored config.
        resume_overrides = [o for o in overrides if not o.startswith(("run.storage=", "run.name="))]
        summary = run_pretraining(
            cfg,
            tracking_uri=args.tracking_uri,
            resume=resume,
            resume_overrides=resume_overrides,
            more_steps=args.more_steps,
            address=args.address,
            wait_for_resources=args.wait_for_resources,
            launch_time=LAUNCH_TIME,
            register=args.register,
            checkpoint_pictures=args.checkpoint_pictures,
        )
    except UserError as err:  # bad input: 2; training failed: 1 (LaunchError)
        return report_error(err, err.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # SIGTERM (ours before Ray starts, Ray's own after ray.init: ray-project/ray#39482)
        if exc.code in (signal.SIGTERM, EXIT_TERMINATED):
            print("[siamim] terminated (SIGTERM)", file=sys.stderr, flush=True)
            return EXIT_TERMINATED
        raise
    if argv is None:
        shutdown_embedded_ray()  # only a local instance this process started (a no-op otherwise)
    print("\n".join(summary.lines()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
