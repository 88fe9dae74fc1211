"""Logging evaluation results to MLflow (``jobs/evaluate.py``, the ablation's evaluation task).

Results go to the pretraining run (metrics ``eval.<key>``, artifacts
``eval/evaluation.md`` and ``eval/evaluation.csv``, with ``--pictures`` also
``eval/pictures/<representation>/*.png``), or to a child run of it
(tag ``mlflow.parentRunId``), or, for baselines without a pretraining run, to a
new run in the experiment.
"""

from __future__ import annotations

import time

from siamim.orchestration.tracking import _experiment_id


class RunNotFound(LookupError):
    """The MLflow run to log into is not in the tracking store."""


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether ``run_id`` is a run of the tracking store at ``tracking_uri``."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception:
        return False
    return True


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

    ``run_id`` given: log into it, or with ``child=True`` into a new child run
    of it (same experiment, tag ``mlflow.parentRunId``). ``run_id=None``: a new
    run ``run_name`` in ``experiment``. ``pictures_dir``: a folder of feature pictures
    (``jobs/evaluate.py --pictures``), logged as ``eval/pictures/``.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    tags = dict(tags or {})
    created = False
    if run_id is not None:
        try:
            parent = client.get_run(run_id)
        except Exception as err:
            raise RunNotFound(
                f"MLflow run {run_id} is not in tracking store {tracking_uri} ({err}); pass the "
                "pretraining's --tracking-uri, or --run-id of a run in this store"
            ) from err
        if child:
            tags["mlflow.parentRunId"] = run_id
            run_id = client.create_run(parent.info.experiment_id, run_name=run_name, tags=tags).info.run_id
            created = True
    else:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        created = True
    now = int(time.time() * 1000)
    client.log_batch(  # MlflowClient.log_batch splits into the store's batch limits itself
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()] if created else [],
        tags=[RunTag(k, str(v)) for k, v in tags.items() if not created],
    )
    client.log_text(run_id, markdown, "eval/evaluation.md")
    client.log_text(run_id, csv_text, "eval/evaluation.csv")
    if pictures_dir is not None:
        client.log_artifacts(run_id, str(pictures_dir), "eval/pictures")
    if created:
        client.set_terminated(run_id, status="FINISHED")
    return run_id
