"""One trial of the ablation grid: pretrain a row with Ray Train, evaluate it, report to Tune and MLflow.

:func:`run_trial` is the Ray Tune function trainable, in the child run of
:func:`~siamim.orchestration.driver.tune.run_child` (tag ``ablation.trial=<row>/<seed>``; params: the resolved
config's flat keys + ``ablation.row``/``seed``). The row's config (:func:`~siamim.orchestration.ablation.spec.trial_config`)
is pretrained by :func:`~siamim.orchestration.driver.launch.fit_trial` in the stable run directory
``<storage>/<grid>/pretrain/<row>-s<seed>`` (a retried trial continues from its last checkpoint), then evaluated
as a Ray task holding the trial's CPUs/GPUs (the trial actor itself reserves none).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import ray
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from siamim.checkpoint import load_checkpoint, load_encoder
from siamim.config import flatten, from_dict, to_dict
from siamim.eval.report import flat_metrics, table_rows, to_csv, to_markdown
from siamim.eval.representation import EncoderRepresentation
from siamim.eval.runner import Suite, evaluate
from siamim.orchestration.ablation.rows import row_source, switches_of
from siamim.orchestration.ablation.spec import trial_config, trial_key, trial_run_name
from siamim.orchestration.ablation.table import headline_keys
from siamim.orchestration.driver import tune as tx
from siamim.orchestration.driver.launch import fit_trial
from siamim.orchestration.driver.trainer import log_run_end
from siamim.orchestration.runs import storage as st
from siamim.orchestration.runs.checkpoints import checkpoint_location
from siamim.orchestration.runs.refs import resolve_checkpoint
from siamim.orchestration.tracking.evaluation import log_evaluation


def eval_resources(spec: dict) -> dict:
    """Resources of a trial's evaluation task: the CPUs of its workers and one worker's GPU share."""
    return {
        "num_cpus": float(spec["workers_per_trial"] * spec["cpus_per_worker"]),
        "num_gpus": float(spec.get("gpus_per_worker") or 0.0),
    }


def _finished_metrics(previous, spec: dict) -> dict | None:
    """The stored results of a child run that already finished this trial completely, else None."""
    if previous is None or previous.info.status != "FINISHED":
        return None
    metrics = dict(previous.data.metrics)
    return metrics if all(key in metrics for key, _, _ in headline_keys(spec["protocols"])) else None


# --------------------------------------------------------------------------- evaluation task
def evaluate_checkpoint(checkpoint: str, cfg_dict: dict, protocols: list[str]) -> tuple[dict, str, str]:
    """Evaluate a Train checkpoint (directory path or storage URI); returns ``(metrics, markdown, csv)``."""
    cfg = from_dict(cfg_dict)
    tmp = tempfile.mkdtemp(prefix="siamim-ablate-eval-")
    try:
        state = load_checkpoint(resolve_checkpoint(checkpoint, tmp).path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    encoder, _ = load_encoder(state)
    rep = EncoderRepresentation(encoder, name="checkpoint")
    results = {"checkpoint": evaluate(rep, cfg, protocols, Suite(cfg, print), print)}
    rows = table_rows(results)
    return flat_metrics(results, "checkpoint"), to_markdown(rows, ["checkpoint"]), to_csv(rows, ["checkpoint"])


# --------------------------------------------------------------------------- the trainable
def run_trial(config: dict, spec: dict) -> None:
    """Tune function trainable: ``config = {"row", "seed"}``; ``spec`` is the grid (``tune.with_parameters``)."""
    row, seed = config["row"], int(config["seed"])
    started = time.time()
    cfg = trial_config(spec, row, seed)
    source = row_source(row)
    params = {**flatten(cfg), "ablation.row": row, "ablation.seed": seed}
    tags = {"ablation.grid": spec["name"], "ablation.row": row, "ablation.seed": seed, "ablation.source": source}
    tags.update({"mlflow.source.name": "jobs/ablate.py", "source": source})
    tx.run_child(
        spec,
        "ablation",
        trial_key(row, seed),
        trial_run_name(row, seed),
        params,
        tags,
        finished=lambda previous: _finished_metrics(previous, spec),
        work=lambda run_id: _pretrain_and_evaluate(spec, cfg, run_id, started, row, seed),
        report={"row": row, "seed": seed},
        note=source,
        start_tags={f"ablation.switch.{k}": v for k, v in switches_of(cfg).items()},
    )


def _pretrain_and_evaluate(spec: dict, cfg, run_id: str, started: float, row: str, seed: int) -> dict:
    """Pretrain the trial (its end logged as a pretraining run's, ``--register``), evaluate its checkpoint as a
    Ray task, log the evaluation; returns the metrics for Tune."""
    uri = spec["tracking_uri"]
    storage = st.resolve_storage(cfg.run.storage)
    knn = "knn" in spec["protocols"]  # kNN once per trial: the evaluation computes it when the protocols include it
    result = fit_trial(cfg, storage, uri, run_id, started, final_knn=not knn, ablation_grid=spec["name"])
    if result.checkpoint is None:
        raise RuntimeError("pretraining finished without a checkpoint")
    checkpoint = checkpoint_location(storage, result.checkpoint)  # with the endpoint (?endpoint_override=...)
    model = f"{spec['register']}-{row}" if spec.get("register") else None  # --register; as a pretraining run's end
    log_run_end(uri, run_id, result.checkpoint, cfg, checkpoint, model=model, row=row, seed=seed, grid=spec["name"])
    train_metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    pretrain_s, t0 = time.time() - started, time.time()
    # Outside the trial actor's placement group (which holds no CPU): the task takes the trial's own resources.
    task = ray.remote(evaluate_checkpoint).options(
        **eval_resources(spec),
        max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    metrics, markdown, csv_text = ray.get(task.remote(checkpoint, to_dict(cfg), list(spec["protocols"])))
    eval_s = time.time() - t0
    step = int(train_metrics.get("step", 0))
    log_evaluation(
        uri,
        metrics,
        markdown,
        csv_text,
        run_id=run_id,
        step=step,
        tags={"eval.protocols": ",".join(spec["protocols"]), "eval.checkpoint": checkpoint},
    )
    timings = {"ablation.pretrain_s": pretrain_s, "ablation.eval_s": eval_s}
    ts = int(time.time() * 1000)
    MlflowClient(uri).log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in timings.items()])
    return {
        **{f"train.{k}": v for k, v in train_metrics.items()},
        **metrics,
        **timings,
        "step": step,
        "checkpoint": checkpoint,
    }
