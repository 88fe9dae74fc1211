#!/usr/bin/env python
"""One table, paired differences and plot from several finished ablation grids at the same budget.

    python scripts/grid_report.py --grid runs/ablation/noise-floor --grid runs/ablation/rows-dehj \
        --floors runs/eval/baselines/evaluation.csv --out docs/results --plot docs/results.png

A grid of rows a, i, k and a later grid of rows d, e, h, j (same epochs/steps, seeds and
protocols) make one seven-row table: each grid directory holds its ``siamim_ablation.json``
(the spec) and ``ablation_trials.csv`` (one line per trial), as ``jobs/ablate.py`` leaves them.
Grids whose budgets, overrides or protocols differ are refused (their rows would not compare).
``--floors``: the ``evaluation.csv`` of ``jobs/evaluate.py --baseline pixels,random`` on the same
protocols, drawn as dashed lines in the plot and listed under the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from siamim.orchestration.ablation import table as tbl  # noqa: E402

SAME = ("epochs", "steps", "overrides", "protocols", "workers_per_trial")  # what makes two grids' rows comparable
FLOOR_NAMES = {"pixels": "raw pixels", "random": "random init"}


def read_grid(path: Path) -> tuple[dict, list[dict]]:
    """``(spec, finished trials)`` of the grid directory ``path``; a trial: ``{"row", "seed", "eval.<key>": %}``."""
    spec_file, trials_file = path / "siamim_ablation.json", path / "ablation_trials.csv"
    for f in (spec_file, trials_file):
        if not f.is_file():
            raise SystemExit(f"--grid {path}: no {f.name} (is it a finished jobs/ablate.py grid directory?)")
    spec = json.loads(spec_file.read_text())["spec"]
    trials = []
    for r in csv.DictReader(trials_file.open()):
        if r.pop("status") == "FINISHED":
            trials.append({"row": r.pop("row"), "seed": int(r.pop("seed")), **{k: float(v) for k, v in r.items() if v}})
    return spec, trials


def read_floors(path: Path) -> dict[str, dict[str, float]]:
    """``{"raw pixels": {"eval.knn_top1": %, ...}, "random init": {...}}`` from an ``evaluation.csv``."""
    floors: dict[str, dict[str, float]] = {}
    for r in csv.DictReader(path.open()):
        if r["representation"] in FLOOR_NAMES:
            floors.setdefault(FLOOR_NAMES[r["representation"]], {})[f"eval.{r['key']}"] = float(r["value"])
    if not floors:
        raise SystemExit(f"--floors {path}: no pixels/random rows (run jobs/evaluate.py --baseline pixels,random)")
    return floors


def combine(grids: list[Path]) -> tuple[list[str], list[dict]]:
    """``(protocols, finished trials of all grids)``; exits naming the setting when two grids differ."""
    specs, trials = [], []
    for g in grids:
        spec, finished = read_grid(g)
        specs.append(spec)
        trials += finished
    for spec, g in zip(specs[1:], grids[1:], strict=True):
        for key in SAME:
            if spec.get(key) != specs[0].get(key):
                raise SystemExit(
                    f"--grid {g}: {key}={spec.get(key)!r} but --grid {grids[0]} has {specs[0].get(key)!r}; "
                    "only grids at the same budget and protocols combine"
                )
    seen = [(t["row"], t["seed"]) for t in trials]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise SystemExit(f"trials in more than one grid: {', '.join(f'{r}/{s}' for r, s in twice)}")
    return specs[0]["protocols"], trials


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="append", required=True, type=Path, help="a grid directory (repeat)")
    p.add_argument("--floors", type=Path, help="evaluation.csv of jobs/evaluate.py --baseline pixels,random")
    p.add_argument("--out", type=Path, required=True, help="directory for table.md and paired.md")
    p.add_argument("--plot", type=Path, help="the PNG (default <out>/plot.png)")
    args = p.parse_args(argv)
    protocols, trials = combine(args.grid)
    floors = read_floors(args.floors) if args.floors else None
    table = tbl.assemble(trials, protocols)
    md = tbl.to_markdown(table, protocols)
    if floors:
        md += (
            "\n"
            + "\n".join(
                f"* {name}: "
                + ", ".join(
                    f"{title} {levels[key]:.2f}" for key, title, _ in tbl.headline_keys(protocols) if key in levels
                )
                for name, levels in floors.items()
            )
            + "\n"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(md)
    (args.out / "paired.md").write_text(tbl.paired_markdown(tbl.paired_differences(trials, protocols)))
    plot = tbl.plot(trials, protocols, args.plot or args.out / "plot.png", floors=floors)
    print(md + "\n" + (args.out / "paired.md").read_text() + f"\nwritten: {args.out}/table.md, paired.md, {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
