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


def experiment_main(args: argparse.Namespace, spec_type, build, run: str, summary_lines) -> int:
    """``main`` of the grid and the search: ``build(storage)`` makes the ``spec_type`` from ``args``, checked before
    Ray, MLflow and torch are imported; ``--dry-run`` prints ``spec.dry_run(have, where)``, else ``run``
    (``module:function``, imported only then) runs it or ``--resume``s; ``summary_lines(summary)`` is printed.
    Exit 2 on bad input, the error's own code (1: trials failed), 130 on Ctrl-C."""
    import importlib

    from siamim.errors import UserError
    from siamim.orchestration.driver.submitted import job_storage

    try:
        storage = job_storage(args, spec_type.model_fields["storage"].default, spec_type.what)
        how = {"tracking_uri": args.tracking_uri, "address": args.address}
        if args.resume:
            how.update(resume=args.resume, storage=storage)
            spec = None
        else:
            spec = build(storage)
            spec.check()
            if args.dry_run:
                from siamim.orchestration.driver.resources import dry_run_resources

                print("\n".join(spec.dry_run(*dry_run_resources(args.address))), flush=True)
                return 0
        module, function = run.split(":")
        summary = getattr(importlib.import_module(module), function)(spec, **how)
    except UserError as err:
        return report_error(err, err.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print("\n".join(summary_lines(summary)), flush=True)
    return 0
