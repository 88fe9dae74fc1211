"""The MLflow UI links the jobs print: their form, every UI string they rely on in the installed MLflow's
build, and the shared runs-table view in a real store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from siamim.orchestration.tracking import ui as mlflow_ui

UI_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


@pytest.fixture(scope="module")
def ui_code() -> str:
    """The installed MLflow UI's JavaScript (its routes, query parameters, tag names, labels)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(UI_BUILD.glob("*.js")))


def test_links_open_the_runs_table_and_the_run():
    uri = "http://127.0.0.1:5000/"
    assert mlflow_ui.runs_table_url(uri, "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=siamim"
    )
    assert mlflow_ui.run_url(uri, "7", "abc") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"
    local = mlflow_ui.ui_lines("sqlite:////data/mlflow.db", "1", "abc")
    assert local[0].endswith(f"http://127.0.0.1:{mlflow_ui.UI_PORT}/#/experiments/1/runs/abc")
    assert (
        local[-1]
        .strip()
        .endswith(f".venv/bin/mlflow ui --backend-store-uri sqlite:////data/mlflow.db --port {mlflow_ui.UI_PORT})")
    )
    assert mlflow_ui.ui_lines("databricks", "1", "abc") == []


def test_the_links_use_what_the_installed_ui_has(ui_code):
    assert "createHashRouter" in ui_code  # the routes live after "#"
    for route in ('"/experiments/:experimentId/runs"', '"/experiments/:experimentId/runs/:runUuid"'):
        assert route in ui_code, route
    assert '"workflowType"' in ui_code and 'MACHINE_LEARNING="machine_learning"' in ui_code
    assert 'defaultMessage:"Model training"' in ui_code  # the toggle the query selects
    assert f'"{mlflow_ui.RUNS_QUERY.split("&")[1].split("=")[0]}"' in ui_code  # viewStateShareKey
    assert f'"{mlflow_ui.SHARED_VIEW_TAG}"' in ui_code
    assert '"selectedColumns"' in ui_code
    assert '=(e,t)=>e+".`"+t+"`"' in ui_code  # the column id: <kind>.`<name>`
    assert mlflow_ui.column("metrics", "knn_top1") == "metrics.`knn_top1`"


def test_shared_view_puts_knn_top1_in_the_table(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    mlflow_ui.share_runs_view(uri, exp, ("knn_top1",), ("ablation.row",))
    view = json.loads(client.get_experiment(exp).tags[mlflow_ui.SHARED_VIEW_TAG + mlflow_ui.VIEW_KEY])
    assert view == {"selectedColumns": ["params.`ablation.row`", "metrics.`knn_top1`"]}
