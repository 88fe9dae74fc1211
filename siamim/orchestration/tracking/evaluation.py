"""Logging evaluation results to MLflow (``jobs/evaluate.py``, the ablation's evaluation task).

:func:`log_evaluation` writes metrics ``eval.<key>`` and the artifacts ``eval/evaluation.md`` and
``eval/evaluation.csv`` (with ``--pictures`` also ``eval/pictures/<representation>/*.png``) into a run, a new child
run of it (tag ``mlflow.parentRunId``), or a new run in the experiment. :func:`record_evaluation` (what
``jobs/evaluate.py`` does) makes every evaluation its own numbered child run ``evaluation-<n>-...`` of the
pretraining run and sets the pretraining run's headline ``eval.*`` metrics from it (tags ``eval.from_run_id`` /
``eval.from_run_name``); nothing of an earlier evaluation is overwritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from siamim.errors import UserError
from siamim.orchestration.tracking import _experiment_id

EVALUATION_TAG = "siamim.evaluation"  # on every evaluation child run: its number among the parent's evaluations


class RunNotFound(UserError, LookupError):
    """The MLflow run to log into is not in the tracking store."""


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is a run of the tracking store at ``tracking_uri``."""
    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except Exception:
        return False
    return True


def _get_run(client: MlflowClient, tracking_uri: str, run_id: str):
    try:
        return client.get_run(run_id)
    except Exception as err:
        raise RunNotFound(
            f"MLflow run {run_id} is not in tracking store {tracking_uri} ({err}); pass the "
            "pretraining's --tracking-uri, or --run-id of a run in this store"
        ) from err


def _log(client: MlflowClient, run_id: str, metrics: dict, step: int, tags: dict, params: dict | None = None) -> None:
    now = int(time.time() * 1000)
    client.log_batch(  # MlflowClient.log_batch splits into the store's batch limits itself
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


def log_evaluation(
    tracking_uri: str,
    metrics: dict[str, float],
    markdown: str,
    csv_text: str,
    *,
    run_id: str | None = None,
    child: bool = False,
    experiment: str = "siamim",
    run_name: str = "evaluate",
    step: int = 0,
    tags: dict[str, str] | None = None,
    params: dict[str, object] | None = None,
    pictures_dir=None,
) -> str:
    """Log ``metrics`` and the table (``eval/evaluation.md``, ``eval/evaluation.csv``); returns the run id used.

    ``run_id`` given: log into it (``tags`` set on it), or with ``child=True`` into a new child run of it; else a
    new run ``run_name`` in ``experiment``. A new run gets ``tags`` at creation, ``params`` and ends FINISHED.
    ``pictures_dir``: a folder of feature pictures (``--pictures``), logged as ``eval/pictures/``.
    """
    client = MlflowClient(tracking_uri)
    tags = dict(tags or {})
    created = run_id is None or child
    if run_id is not None:
        parent = _get_run(client, tracking_uri, run_id)
        if child:
            tags["mlflow.parentRunId"] = run_id
            run_id = client.create_run(parent.info.experiment_id, run_name=run_name, tags=tags).info.run_id
    else:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
    _log(client, run_id, metrics, step, {} if created else tags, params if created else None)
    client.log_text(run_id, markdown, "eval/evaluation.md")
    client.log_text(run_id, csv_text, "eval/evaluation.csv")
    if pictures_dir is not None:
        client.log_artifacts(run_id, str(pictures_dir), "eval/pictures")
    if created:
        client.set_terminated(run_id, status="FINISHED")
    return run_id


@dataclass
class EvaluationRecord:
    """Where one evaluation went: its own run, and the pretraining run whose headline metrics it set."""

    run_id: str
    run_name: str
    parent_id: str | None  # None: no pretraining run in this store (a standalone run)


def record_evaluation(
    tracking_uri: str,
    metrics: dict[str, float],
    markdown: str,
    csv_text: str,
    *,
    pretraining_run_id: str | None,
    experiment: str = "siamim",
    name: str = "evaluate",
    step: int = 0,
    tags: dict[str, str] | None = None,
    params: dict[str, object] | None = None,
    pictures_dir=None,
) -> EvaluationRecord:
    """Log one evaluation as its own run; returns where it went.

    With ``pretraining_run_id``: a new child run ``evaluation-<n>-<name>`` of it (n = 1, 2, ... per pretraining
    run) with ``metrics``, ``params`` (the evaluation's settings), ``tags`` and the artifacts; then the pretraining
    run gets the same ``metrics`` at ``step`` and tags ``eval.from_run_id`` / ``eval.from_run_name`` (plus
    ``tags``). Without: a new run ``name`` in ``experiment``. Raises :class:`RunNotFound` when
    ``pretraining_run_id`` is not in the store.
    """
    tags = dict(tags or {})
    common = {"step": step, "params": params, "pictures_dir": pictures_dir}
    if pretraining_run_id is None:
        run_id = log_evaluation(
            tracking_uri, metrics, markdown, csv_text, experiment=experiment, run_name=name, tags=tags, **common
        )
        return EvaluationRecord(run_id, name, None)
    client = MlflowClient(tracking_uri)
    parent = _get_run(client, tracking_uri, pretraining_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{pretraining_run_id}'",
        max_results=10000,
    )
    number = sum(EVALUATION_TAG in run.data.tags for run in children) + 1
    run_name = f"evaluation-{number}-{name}"
    run_id = log_evaluation(
        tracking_uri,
        metrics,
        markdown,
        csv_text,
        run_id=pretraining_run_id,
        child=True,
        run_name=run_name,
        tags={**tags, EVALUATION_TAG: str(number)},
        **common,
    )
    _log(
        client, pretraining_run_id, metrics, step, {**tags, "eval.from_run_id": run_id, "eval.from_run_name": run_name}
    )
    return EvaluationRecord(run_id, run_name, pretraining_run_id)
