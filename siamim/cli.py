"""What the jobs' command lines share (torch-free: a bad flag fails before anything heavy is imported)."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2  # every job: a bad flag, config key or value, found before any compute
EXIT_INTERRUPTED = 130  # Ctrl-C


def job_parser(script: str, doc: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``jobs/<script>``: its docstring's first paragraph as the description, ``epilog`` verbatim."""
    return argparse.ArgumentParser(
        prog=f"jobs/{script}",
        description=doc.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )


def report_error(err: BaseException, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``error: <err>`` on stderr (one line, no traceback) and return the exit ``code``."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    return code


def add_trial_flags(p: argparse.ArgumentParser) -> None:
    """The per-trial resource flags of the jobs that run many trials (jobs/ablate.py, jobs/search.py)."""
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs per worker, fractions allowed (0.25: four trials share a GPU); default 0 (CPU)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS / the job's cluster / local)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")


def spec_flag_values(args: argparse.Namespace, storage: str) -> dict:
    """What the grid's and the search's specs take alike from their command lines (:func:`add_trial_flags`, the
    budget, retries, overrides, tracking), as keyword arguments; ``storage``: the checked ``--storage``."""
    keys = ("workers_per_trial", "cpus_per_worker", "gpus_per_worker", "max_concurrent", "max_retries")
    values = {k: getattr(args, k) for k in (*keys, "steps", "epochs", "tracking_uri", "experiment")}
    return {**values, "overrides": list(args.overrides), "storage": storage}
