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
from dataclasses import dataclass, field

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune

from siamim.errors import UserError
from siamim.orchestration import tracking
from siamim.orchestration.ablation import table as tbl
from siamim.orchestration.ablation.spec import (
    AblationInputError,
    GridSpec,
    trial_config,
    trial_key,
    trial_run_name,
    validate_spec,
)
from siamim.orchestration.ablation.table import headline_keys
from siamim.orchestration.ablation.trial import run_trial
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.driver.preflight import preflight
from siamim.orchestration.runs import storage as st
from siamim.orchestration.tracking import ui as mlflow_ui

GRID_RECORD = "siamim_ablation.json"
TRIAL_ACTOR_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}  # the trial actor only drives; see docs/ablation.md


class AblationFailed(UserError, RuntimeError):
    """Some trials failed after their retries (the table of the others is still written). Exit 1."""

    exit_code = 1


@dataclass
class AblationSummary:
    name: str
    parent_run_id: str
    tracking_uri: str
    tune_path: str
    finished: list[dict]
    failed: list[dict]
    table_md: str
    paired_md: str
    artifacts: dict[str, str]
    wall_s: float
    ui: list[str] = field(default_factory=list)  # the MLflow UI's links (mlflow_ui.ui_lines)


# --------------------------------------------------------------------------- the grid
def _trial_name(trial) -> str:
    return trial_run_name(trial.config["row"], trial.config["seed"])


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}_{trial.trial_id}"


def _trainable(spec_dict: dict):
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec_dict), TRIAL_ACTOR_RESOURCES)


def _parent_params(spec: GridSpec) -> dict:
    return {
        "ablation.name": spec.name,
        "ablation.rows": ",".join(spec.rows),
        "ablation.seeds": spec.seeds,
        "ablation.protocols": ",".join(spec.protocols),
        "ablation.steps": spec.steps,
        "ablation.epochs": spec.epochs,
        "ablation.workers_per_trial": spec.workers_per_trial,
        "ablation.cpus_per_worker": spec.cpus_per_worker,
        "ablation.gpus_per_worker": spec.gpus_per_worker,
        "ablation.max_concurrent": spec.max_concurrent,
        "ablation.max_retries": spec.max_retries,
        "ablation.overrides": " ".join(spec.overrides) or "-",
        "ablation.storage": spec.storage,
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
        root = st.resolve_storage(storage or (spec.storage if spec else "runs/ablation"))
        if not st.exists(root, resume, GRID_RECORD):
            raise AblationInputError(f"--resume {resume}: no ablation grid of that name under {root.display()}")
        record = st.read_json(root, resume, GRID_RECORD)
        stored = dict(record["spec"])
        stored.pop("fail_trial", None)  # grids recorded before the tests' hidden flag became a worker hook
        spec = GridSpec(**stored)
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"]
    assert spec is not None
    root = st.resolve_storage(spec.storage)
    spec.storage = root.uri
    validate_spec(spec)
    spec.tracking_uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    first_cfg = trial_config({**spec.model_dump(), "pretrain_storage": spec.storage}, spec.rows[0], 0)
    preflight(first_cfg, root, spec.tracking_uri)
    if record is None and st.exists(root, spec.name):
        raise AblationInputError(
            f"--name {spec.name}: {root.display(spec.name)} already exists; continue that "
            f"grid with --resume {spec.name}, or pick another --name"
        )
    pack = tx.start_ray(spec, address)
    log(
        f"[ablate] Ray ready {time.time() - t0:.1f} s after launch; {pack['trials']} trials, "
        f"{pack['concurrent']} at a time"
    )

    parent, tags = tx.open_parent(spec, root, "ablation", _parent_params(spec), GRID_RECORD, record)
    spec_dict = {
        **spec.model_dump(),
        "parent_run_id": parent,
        "git_commit": tags["mlflow.source.git.commit"],
        "pretrain_storage": root.locate(root.join(spec.name, "pretrain")),
    }
    log(
        f"[ablate] {'resuming' if record else 'starting'} grid {spec.name!r}: MLflow parent run {parent} at "
        f"{spec.tracking_uri}; Tune experiment {root.display(spec.name)}"
    )

    experiment_id = tracking.experiment_of(spec.tracking_uri, parent)
    mlflow_ui.share_runs_view(  # the runs table behind the printed link: a trial's row, seed and headlines
        spec.tracking_uri,
        experiment_id,
        tuple(k for k, _, _ in headline_keys(spec.protocols)),
        ("ablation.row", "ablation.seed"),
    )
    ui = mlflow_ui.ui_lines(spec.tracking_uri, experiment_id, parent)
    for line in ui:
        log(f"[ablate] {line.strip()}")

    def new_tuner(trainable):
        return tune.Tuner(
            trainable,
            param_space={"row": tune.grid_search(spec.rows), "seed": tune.grid_search(list(range(spec.seeds)))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=pack["concurrent"],
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tx.run_config(spec, root),
        )

    grid = tx.fit(spec, root, _trainable(spec_dict), record is not None, new_tuner, parent, "ablate", log)
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
        tx.interrupted(spec, parent, "ablate", log, f" with {missing} trial(s) unfinished")
        raise KeyboardInterrupt
    summary = _assemble(spec, parent, root, finished, failed, t0, log)
    summary.ui = ui
    if failed:
        raise AblationFailed(
            f"{len(failed)} of {len(spec.trials)} trials failed after {spec.max_retries} "
            f"retries: {', '.join(trial_key(f['row'], f['seed']) for f in failed)}; the table "
            f"of the others is in MLflow run {parent}"
        )
    return summary


def _assemble(
    spec: GridSpec, parent: str, root: st.Storage, finished: list[dict], failed: list[dict], t0: float, log
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
    client = MlflowClient(spec.tracking_uri)
    files = {
        "ablation_table.md": table_md,
        "ablation_table.csv": table_csv,
        "ablation_paired.md": paired_md,
        "ablation_paired.csv": paired_csv,
        "ablation_trials.csv": trials_csv,
    }
    draw = (lambda folder: tbl.plot(finished, spec.protocols, folder / "ablation_plot.png")) if finished else None
    artifacts = tx.publish(spec, parent, root, "ablation", files, draw)
    ts = int(time.time() * 1000)
    metrics = {
        "ablation.trials_finished": len(finished),
        "ablation.trials_failed": len(failed),
        "ablation.wall_s": time.time() - t0,
    }
    for d in diffs:
        metrics[f"paired.{d['first']}-{d['second']}.{d['metric'].removeprefix('eval.')}"] = d["mean"]
    client.log_batch(parent, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    client.set_tag(parent, "ablation.failed_trials", ",".join(trial_key(f["row"], f["seed"]) for f in failed) or "-")
    tracking.finish_run(spec.tracking_uri, parent, "FAILED" if failed and not finished else "FINISHED")
    log("\n" + table_md + "\npaired differences (first row minus second, same seed):\n\n" + paired_md)
    return AblationSummary(
        spec.name,
        parent,
        spec.tracking_uri,
        root.display(spec.name),
        finished,
        failed,
        table_md,
        paired_md,
        artifacts,
        time.time() - t0,
    )


__all__ = ["AblationFailed", "AblationSummary", "run_ablation"]
