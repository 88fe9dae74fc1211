"""The driver of ``jobs/ablate.py``: the paper's ablation grid as one experiment of
:mod:`siamim.orchestration.driver.tune` (rows x seeds, each trial :func:`~siamim.orchestration.ablation.trial.run_trial`),
then its own results: the table, the paired differences and the plot into the parent run and storage.

Layout under ``<storage>/<grid name>/``::

    experiment_state-*.json, tuner.pkl, ...   Ray Tune's experiment state (what --resume restores)
    <row>-s<seed>_<id>/                       one Tune trial: result.json, progress.csv, events.out.tfevents.*
    pretrain/<row>-s<seed>/checkpoint_*/      the trial's Ray Train run (checkpoints, siamim_run.json)
    siamim_ablation.json                      grid record: flags, MLflow parent run id, tracking URI
    ablation_table.md/.csv, ablation_paired.md/.csv, ablation_trials.csv, ablation_plot.png   the results
"""

from __future__ import annotations

from dataclasses import dataclass

from ray import tune

from siamim.errors import UserError
from siamim.orchestration.ablation import table as tbl
from siamim.orchestration.ablation.spec import GridSpec, trial_key
from siamim.orchestration.ablation.trial import run_trial
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.driver.experiment import csv_table


class AblationFailed(UserError, RuntimeError):
    """Some trials failed after their retries (the table of the others is still written). Exit 1."""

    exit_code = 1


@dataclass(kw_only=True)
class AblationSummary(tx.ExperimentSummary):
    finished: list[dict]
    failed: list[dict]
    table_md: str
    paired_md: str


class Grid(tx.ExperimentJob):
    """The grid's own part: rows x seeds, and the table and paired differences of the finished trials."""

    spec_type, trial = GridSpec, staticmethod(run_trial)

    def param_space(self, spec: GridSpec) -> dict:
        return {"row": tune.grid_search(spec.rows), "seed": tune.grid_search(list(range(spec.seeds)))}

    def finish(self, exp: tx.Experiment, results, log) -> AblationSummary:
        spec, finished, failed, unfinished = exp.spec, [], [], 0
        for result in results:
            cfg = result.config or {}
            if "row" not in cfg:
                continue
            entry = {"row": cfg["row"], "seed": int(cfg["seed"]), **(result.metrics or {})}
            if result.error is not None:
                failed.append({**entry, "error": f"{type(result.error).__name__}: {result.error}"[:500]})
            elif any(k.startswith("eval.") for k in entry):
                finished.append(entry)
            else:
                unfinished += 1
        if unfinished:  # stopped by Ctrl-C before its evaluation
            exp.interrupted(f" with {unfinished} trial(s) unfinished")
            raise KeyboardInterrupt
        table = tbl.assemble(finished, spec.protocols, failed)
        table_md = tbl.to_markdown(table, spec.protocols)
        diffs = tbl.paired_differences(finished, spec.protocols)
        paired_md = tbl.paired_markdown(diffs)
        keys = [k for k, _, _ in tbl.headline_keys(spec.protocols)]
        trials = [
            [r["row"], r["seed"], status, *(r.get(k, "") for k in keys)]
            for status, rows in (("FINISHED", finished), ("FAILED", failed))
            for r in rows
        ]
        files = {
            "ablation_table.md": table_md,
            "ablation_table.csv": tbl.to_csv(table, spec.protocols),
            "ablation_paired.md": paired_md,
            "ablation_paired.csv": tbl.paired_csv(diffs),
            "ablation_trials.csv": csv_table(["row", "seed", "status", *keys], trials),
        }
        draw = (lambda folder: tbl.plot(finished, spec.protocols, folder / "ablation_plot.png")) if finished else None
        metrics = {"ablation.trials_finished": len(finished), "ablation.trials_failed": len(failed)}
        for d in diffs:
            metrics[f"paired.{d['first']}-{d['second']}.{d['metric'].removeprefix('eval.')}"] = d["mean"]
        failed_keys = ",".join(trial_key(f["row"], f["seed"]) for f in failed) or "-"
        status = "FAILED" if failed and not finished else "FINISHED"
        done = exp.close(files, draw, metrics, {"ablation.failed_trials": failed_keys}, status)
        log("\n" + table_md + "\npaired differences (first row minus second, same seed):\n\n" + paired_md)
        if failed:
            raise AblationFailed(
                f"{len(failed)} of {len(spec.trials)} trials failed after {spec.max_retries} "
                f"retries: {', '.join(trial_key(f['row'], f['seed']) for f in failed)}; the table "
                f"of the others is in MLflow run {exp.parent}"
            )
        return AblationSummary(**done, finished=finished, failed=failed, table_md=table_md, paired_md=paired_md)


def run_ablation(spec: GridSpec | None = None, **how) -> AblationSummary:
    """Run the grid ``spec`` (or ``resume=NAME`` under ``storage=``; also ``tracking_uri``, ``address``, ``log``):
    :func:`~siamim.orchestration.driver.tune.run_experiment`. Raises :class:`AblationFailed` (after the table is
    written) when trials failed after their retries."""
    return tx.run_experiment(Grid(), spec, **how)


__all__ = ["AblationFailed", "AblationSummary", "run_ablation"]
