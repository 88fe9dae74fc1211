#!/usr/bin/env python
"""A hyperparameter search on Ray Tune: a space over any config keys, ASHA stopping bad trials early on a live
metric (the online kNN monitor by default), each trial pretrained with Ray Train and tracked in MLflow as a
child of one parent run; the best trial's config is written as the preset configs/found/<name>.yaml.
"""

from __future__ import annotations

import argparse
import sys
import time

from siamim.cli import add_trial_flags, experiment_main, job_parser, spec_flag_values


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(
        "search.py",
        __doc__,
        epilog="""space (--space FILE, YAML of dotted config keys):
  optim.blr:      {loguniform: [1.0e-4, 3.0e-3]}
  optim.ema_m0:   {choice: [0.99, 0.995, 0.996]}
  views.crop_min: {uniform: [0.2, 0.5]}
  model.depth:    {randint: [2, 6]}            # both ends included
  loss.type:      {grid: [unigrad, l2]}        # every value, crossed with the --num-samples random draws
Everything else (overrides, ASHA's rungs, storage, MLflow, resuming, ray job submit's working copy, the found
preset, exit codes): docs/search.md

examples:
  python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 8 --steps 200 --grace-period 50 --dry-run
  python jobs/search.py --space configs/spaces/tiny.yaml --num-samples 8 --epochs 1 --grace-period 40 --name tiny1
  python jobs/pretrain.py --config found/tiny1          # the winner
  python jobs/search.py --resume tiny1                  # after an interruption
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
    from siamim.orchestration.search.space import SearchInputError, read_space
    from siamim.orchestration.search.spec import SearchSpec

    def build(storage: str) -> SearchSpec:
        if not args.space:
            raise SearchInputError("--space FILE is required (a YAML of config keys to samplers; see --help)")
        return SearchSpec(
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

    def summary_lines(summary) -> list[str]:
        best = summary.best
        title = f"search {summary.name!r} finished: {len(summary.trials)} trials in {summary.wall_s:.0f} s"
        head = (
            f"  best               {best['name']}: {best['values']} -> {best['metric']:.4g}",
            f"  preset             {summary.preset}   (--config found/{summary.name})",
        )
        return summary.lines(title, "search_table.md", *head)

    return experiment_main(args, SearchSpec, build, "siamim.orchestration.search.driver:run_search", summary_lines)


if __name__ == "__main__":
    sys.exit(main())
