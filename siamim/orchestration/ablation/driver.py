"""The driver of ``jobs/ablate.py``: the paper's ablation grid as a Ray Tune experiment tracked in MLflow.

Order (fail fast): flags -> every trial's config -> tracking store, storage, data ->
cluster resources -> MLflow parent run + grid record -> ``Tuner.fit`` (or
``Tuner.restore(...).fit`` with ``--resume``) -> table, paired differences, plot
into the parent run.

Layout under ``<storage>/<grid name>/``::

    experiment_state-*.json, tuner.pkl, ...   Ray Tune's experiment state (what --resume restores)
    <row>-s<seed>_<id>/                       one Tune trial: result.json, progress.csv, events.out.tfevents.*
    pretrain/<row>-s<seed>/checkpoint_*/      the trial's Ray Train run (checkpoints, siamim_run.json)
    siamim_ablation.json                      grid record: flags, MLflow parent run id, tracking URI
    ablation_table.md/.csv, ablation_paired.md/.csv, ablation_plot.png   the assembled results

The trial itself is :func:`siamim.orchestration.ablation.trial.run_trial`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ray import tune

from siamim.errors import UserError
from siamim.orchestration import tracking
from siamim.orchestration.ablation import table as tbl
from siamim.orchestration.ablation.spec import GridSpec, trial_config, trial_key, trial_run_name, validate_spec
from siamim.orchestration.ablation.trial import run_trial
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.runs import storage as st

GRID_RECORD = "siamim_ablation.json"


class AblationFailed(UserError, RuntimeError):
    """Some trials failed after their retries (the table of the others is still written). Exit 1."""

    exit_code = 1


@dataclass(kw_only=True)
class AblationSummary(tx.ExperimentSummary):
    finished: list[dict]
    failed: list[dict]
    table_md: str
    paired_md: str


# --------------------------------------------------------------------------- the grid
def _trial_name(trial) -> str:
    return trial_run_name(trial.config["row"], trial.config["seed"])


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}_{trial.trial_id}"


def _parent_params(spec: GridSpec) -> dict:
    keys = ("name", "seeds", "steps", "epochs", "workers_per_trial", "cpus_per_worker", "gpus_per_worker")
    return {
        **{f"ablation.{k}": getattr(spec, k) for k in (*keys, "max_concurrent", "max_retries", "storage")},
        "ablation.rows": ",".join(spec.rows),
        "ablation.protocols": ",".join(spec.protocols),
        "ablation.overrides": " ".join(spec.overrides) or "-",
        "ablation.trials": len(spec.trials),
    }


def run_ablation(
    spec: GridSpec | None = None,
    *,
    resume: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    log=print,
) -> AblationSummary:
    """Run the grid ``spec`` (or resume the grid named ``resume`` under ``storage``); returns the summary.

    Raises a :class:`~siamim.errors.UserError` (``AblationInputError``, ``ConfigError``, the preflight's) before anything starts, and
    :class:`AblationFailed` (after the table is written) when trials failed after their retries.
    """
    t0 = time.time()
    record = None
    if resume is not None:
        default = spec.storage if spec else "runs/ablation"
        spec, record = tx.load_record(GridSpec, resume, storage, default, GRID_RECORD, "ablation grid")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"]
    assert spec is not None
    spec.storage = st.resolve_storage(spec.storage).uri
    validate_spec(spec)
    spec.tracking_uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    exp = tx.open_experiment(
        spec,
        record,
        trial_config({**spec.model_dump(), "pretrain_storage": spec.storage}, spec.rows[0], 0),
        kind="ablation",
        job="ablate",
        what="grid",
        params=_parent_params(spec),
        record_file=GRID_RECORD,
        columns=tuple(k for k, _, _ in tbl.headline_keys(spec.protocols)),  # a trial's row, seed and headlines
        param_columns=("ablation.row", "ablation.seed"),
        launch_time=t0,
        address=address,
        log=log,
    )

    def new_tuner(trainable):
        return tune.Tuner(
            trainable,
            param_space={"row": tune.grid_search(spec.rows), "seed": tune.grid_search(list(range(spec.seeds)))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=exp.pack["concurrent"],
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tx.run_config(spec, exp.root),
        )

    trainable = tx.trainable(run_trial, exp.trial_spec)
    grid = tx.fit(spec, exp.root, trainable, record is not None, new_tuner, exp.parent, "ablate", log)
    finished, failed, unfinished = [], [], []
    for result in grid:
        cfg = result.config or {}
        if "row" not in cfg:
            continue
        entry = {"row": cfg["row"], "seed": int(cfg["seed"]), **(result.metrics or {})}
        if result.error is not None:
            failed.append({**entry, "error": f"{type(result.error).__name__}: {result.error}"[:500]})
        elif any(k.startswith("eval.") for k in entry):
            finished.append(entry)
        else:
            unfinished.append(entry)
    missing = len(spec.trials) - len(finished) - len(failed)  # Tune returns early on SIGINT (Ctrl-C), state saved
    if unfinished or missing > 0:
        tx.interrupted(spec, exp.parent, "ablate", log, f" with {missing} trial(s) unfinished")
        raise KeyboardInterrupt
    summary = _assemble(spec, exp, finished, failed, t0, log)
    if failed:
        raise AblationFailed(
            f"{len(failed)} of {len(spec.trials)} trials failed after {spec.max_retries} "
            f"retries: {', '.join(trial_key(f['row'], f['seed']) for f in failed)}; the table "
            f"of the others is in MLflow run {exp.parent}"
        )
    return summary


def _assemble(
    spec: GridSpec, exp: tx.Experiment, finished: list[dict], failed: list[dict], t0: float, log
) -> AblationSummary:
    table = tbl.assemble(finished, spec.protocols, failed)
    table_md, table_csv = tbl.to_markdown(table, spec.protocols), tbl.to_csv(table, spec.protocols)
    diffs = tbl.paired_differences(finished, spec.protocols)
    paired_md, paired_csv = tbl.paired_markdown(diffs), tbl.paired_csv(diffs)
    keys = [k for k, _, _ in tbl.headline_keys(spec.protocols)]
    trials_csv = (
        "row,seed,status,"
        + ",".join(keys)
        + "\n"
        + "".join(
            f"{r['row']},{r['seed']},{status}," + ",".join(str(r.get(k, "")) for k in keys) + "\n"
            for status, rows in (("FINISHED", finished), ("FAILED", failed))
            for r in rows
        )
    )
    files = {
        "ablation_table.md": table_md,
        "ablation_table.csv": table_csv,
        "ablation_paired.md": paired_md,
        "ablation_paired.csv": paired_csv,
        "ablation_trials.csv": trials_csv,
    }
    draw = (lambda folder: tbl.plot(finished, spec.protocols, folder / "ablation_plot.png")) if finished else None
    artifacts = tx.publish(spec, exp.parent, exp.root, "ablation", files, draw)
    metrics = {
        "ablation.trials_finished": len(finished),
        "ablation.trials_failed": len(failed),
        "ablation.wall_s": time.time() - t0,
    }
    for d in diffs:
        metrics[f"paired.{d['first']}-{d['second']}.{d['metric'].removeprefix('eval.')}"] = d["mean"]
    failed_keys = ",".join(trial_key(f["row"], f["seed"]) for f in failed) or "-"
    status = "FAILED" if failed and not finished else "FINISHED"
    tx.close_parent(spec, exp.parent, metrics, {"ablation.failed_trials": failed_keys}, status)
    log("\n" + table_md + "\npaired differences (first row minus second, same seed):\n\n" + paired_md)
    return AblationSummary(
        **exp.summary(spec, artifacts, t0),
        finished=finished,
        failed=failed,
        table_md=table_md,
        paired_md=paired_md,
    )


__all__ = ["AblationFailed", "AblationSummary", "run_ablation"]
