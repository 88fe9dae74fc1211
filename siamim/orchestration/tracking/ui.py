"""Links into the MLflow UI that open on the runs table, with kNN top-1 as a column.

MLflow 3.17's UI opens an experiment on its GenAI pages ("Traces"), where a training
run does not show, and its runs table shows no metric column until one is picked
under "Columns". What the UI it ships offers instead (read from its build,
``mlflow/server/js/build``; ``tests/orchestration/tracking/test_ui.py`` checks each
string there):

* hash routes ``#/experiments/<id>/runs`` (the runs table) and ``#/experiments/<id>/runs/<run id>``;
* the query ``workflowType=machine_learning``: the "Model training" view instead of GenAI;
* the query ``viewStateShareKey=<key>``: the table's columns from the experiment tag
  ``mlflow.sharedViewState.<key>`` (the UI's own "Share" of a view), a JSON object
  whose ``selectedColumns`` name columns as ``metrics.`knn_top1``` / ``params.`name```.

:func:`share_runs_view` writes that tag; :func:`ui_lines` are the summary's links.
"""

from __future__ import annotations

import json

from siamim.orchestration.tracking import local_store_path

UI_PORT = 5050  # `mlflow ui` for a local store (README); the dev stack's MLflow server takes 5000
VIEW_KEY = "siamim"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUNS_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def column(kind: str, name: str) -> str:
    """The runs table's column id: ``metrics.`knn_top1```, ``params.`ablation.row```."""
    return f"{kind}.`{name}`"


def ui_base(tracking_uri: str) -> str | None:
    """The UI's address: the tracking server itself, or ``mlflow ui`` on :data:`UI_PORT` for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}" if local_store_path(tracking_uri) is not None else None


def runs_table_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's runs table in the "Model training" view, with the columns of :func:`share_runs_view`."""
    base = ui_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs?{RUNS_QUERY}" if base else None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """One run's page (overview, metrics, artifacts)."""
    base = ui_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None


def share_runs_view(
    tracking_uri: str, experiment_id: str, metrics: tuple[str, ...], params: tuple[str, ...] = ()
) -> None:
    """Store the runs-table view (these params and metrics as columns) that :func:`runs_table_url` opens."""
    from mlflow.tracking import MlflowClient

    columns = [column("params", p) for p in params] + [column("metrics", m) for m in metrics]
    MlflowClient(tracking_uri).set_experiment_tag(
        experiment_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps({"selectedColumns": columns})
    )


def ui_lines(tracking_uri: str, experiment_id: str, run_id: str) -> list[str]:
    """The summary's lines: the run's page, the runs table, and for a local store the command that serves them."""
    base = ui_base(tracking_uri)
    if base is None:
        return []
    lines = [
        f"  MLflow UI        {run_url(tracking_uri, experiment_id, run_id)}",
        f"  runs table       {runs_table_url(tracking_uri, experiment_id)}",
    ]
    if not tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  (serve it with   .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port {UI_PORT})")
    return lines
