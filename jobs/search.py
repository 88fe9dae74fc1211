#!/usr/bin/env python
"""A hyperparameter search on Ray Tune: a space over any config keys, ASHA stopping bad trials early on a live
metric (the online kNN monitor by default), each trial pretrained with Ray Train and tracked in MLflow as a
child of one parent run; the best trial's config is written as the preset configs/found/<name>.yaml.

Local (starts an embedded Ray instance):

    python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 8 --steps 200 --grace-period 50 --name s1

On a running Ray cluster:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 16 --epochs 1 --storage $PWD/runs/search

Continue an interrupted search (finished and stopped trials are not redone):

    python jobs/search.py --resume NAME --storage <same storage>
"""

from __future__ import annotations

import argparse
import sys
import time

from siamim.cli import EXIT_INTERRUPTED, add_trial_flags, job_parser, report_error, spec_flag_values


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(
        "search.py",
        __doc__,
        epilog="""space (--space FILE, YAML; dotted config keys, docs/search.md):
  optim.blr:      {loguniform: [1.0e-4, 3.0e-3]}
  optim.ema_m0:   {choice: [0.99, 0.995, 0.996]}
  views.crop_min: {uniform: [0.2, 0.5]}
  model.depth:    {randint: [2, 6]}            # both ends included
  loss.type:      {grid: [unigrad, l2]}        # every value, crossed with the --num-samples random draws

overrides: dotted config keys applied to every trial after --config, before the sampled values.

ASHA: --grace-period and the rungs after it (grace x factor^k) are training steps; the kNN monitor runs every
  eval.monitor_every steps (default: the grace period), and ASHA compares trials at the first monitored step
  at or after each rung. A stopped trial's MLflow child run is KILLED with tag siamim.stopped_early=true.

examples:
  python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 8 --steps 200 --grace-period 50 --dry-run
  python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 8 --epochs 1 --grace-period 40 --name tiny1
  python jobs/pretrain.py --config found/tiny1          # the winner
  python jobs/search.py --resume tiny1                  # after an interruption

environment:
  MLFLOW_TRACKING_URI   tracking server or store (default: sqlite:///<cwd>/mlflow.db)
  RAY_ADDRESS           Ray cluster to join (default: the job's cluster, else a new local instance)

under ray job submit the driver runs in Ray's temporary copy of the working directory: --storage and the
MLflow store must lie outside it (exit 2 otherwise), and the found preset is written into that copy: take it
from <storage>/<name>/<name>.yaml or the MLflow parent run (search/<name>.yaml)
""",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides for every trial")
    p.add_argument("--space", metavar="FILE", help="the search space: YAML of dotted config keys to samplers")
    p.add_argument("--config", default="tiny", metavar="PRESET", help="base preset name or YAML path (default tiny)")
    p.add_argument("--num-samples", type=int, default=8, help="random draws of the space (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0; train.seed is the preset's)")
    p.add_argument("--metric", default="knn_monitor", help="live metric ASHA and the best config use (knn_monitor)")
    p.add_argument("--mode", choices=("max", "min"), help="max or min of --metric (default: max; min for a loss)")
    p.add_argument("--grace-period", type=int, default=100, help="ASHA: steps before a trial can be stopped (100)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: rung spacing and cut (default 2)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps per trial (train.max_steps)")
    budget.add_argument("--epochs", type=float, help="training epochs per trial (train.epochs; default: preset)")
    add_trial_flags(p)
    p.add_argument(
        "--max-retries",
        type=int,
        default=0,
        help="retries of a failed trial (default 0: a search's failure is mostly its sampled values, e.g. a "
        "diverging lr)",
    )
    p.add_argument("--storage", help="root of Tune results, checkpoints and the table (default runs/search)")
    p.add_argument("--experiment", default="siamim-search", help="MLflow experiment (default siamim-search)")
    p.add_argument("--name", help="search name: Tune experiment, MLflow parent run, configs/found/<name>.yaml")
    p.add_argument("--resume", metavar="NAME", help="continue search NAME under --storage (Tune's restore)")
    p.add_argument("--dry-run", action="store_true", help="print the sampled trials, budget, rungs, packing; stop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from siamim.errors import UserError
    from siamim.orchestration.driver.submitted import job_storage
    from siamim.orchestration.search.space import SearchInputError, read_space

    try:
        storage = job_storage(args, "runs/search", "search")
        from siamim.orchestration.search.spec import SearchSpec, validate_search

        if args.resume:
            from siamim.orchestration.search.driver import run_search

            summary = run_search(
                resume=args.resume, storage=storage, tracking_uri=args.tracking_uri, address=args.address
            )
        else:
            if not args.space:
                raise SearchInputError("--space FILE is required (a YAML of config keys to samplers; see --help)")
            spec = SearchSpec(
                name=args.name or time.strftime("search-%Y%m%d-%H%M%S"),
                space_text=read_space(args.space),
                config=args.config,
                num_samples=args.num_samples,
                seed=args.seed,
                metric=args.metric,
                mode=args.mode or ("min" if "loss" in args.metric else "max"),
                grace_period=args.grace_period,
                reduction_factor=args.reduction_factor,
                **spec_flag_values(args, storage),
            )
            validate_search(spec)  # a bad space exits 2 before Ray, MLflow and torch are imported
            if args.dry_run:
                return _dry_run(spec, args.address)
            from siamim.orchestration.search.driver import run_search

            summary = run_search(spec, tracking_uri=args.tracking_uri, address=args.address)
    except UserError as err:  # bad input: 2; no trial ran its budget: 1 (SearchFailed)
        return report_error(err, err.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    best = summary.best
    title = f"search {summary.name!r} finished: {len(summary.trials)} trials in {summary.wall_s:.0f} s"
    head = (
        f"  best               {best['name']}: {best['values']} -> {best['metric']:.4g}",
        f"  preset             {summary.preset}   (--config found/{summary.name})",
    )
    print("\n".join(summary.lines(title, "search_table.md", *head)), flush=True)
    return 0


def _dry_run(spec, address: str | None) -> int:
    from siamim.orchestration.driver.resources import dry_run_resources
    from siamim.orchestration.search.spec import budget_steps, describe

    budget = budget_steps(spec)
    print("\n".join(describe(spec, *dry_run_resources(address), budget)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
