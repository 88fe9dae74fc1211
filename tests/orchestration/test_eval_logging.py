"""Logging evaluation results to MLflow (local sqlite store): metric batches, runs, artifacts."""

from __future__ import annotations

import pytest

from siamim.orchestration.eval_logging import RunNotFound, log_evaluation, run_exists


def test_more_metrics_than_one_mlflow_batch_land_in_new_and_existing_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("eval-log", artifact_location=(tmp_path / "art").as_uri())
    metrics = {f"eval.m{i:04d}": float(i) for i in range(1500)}  # MLflow's batch limit is 1000 metrics
    run = log_evaluation(
        uri, metrics, "| table |\n", "a,b\n", experiment="eval-log", step=3, params={"eval.knn.k": 20}, tags={"t": "1"}
    )
    got = client.get_run(run)
    assert got.data.metrics == metrics and got.data.params == {"eval.knn.k": "20"} and got.data.tags["t"] == "1"
    assert got.info.status == "FINISHED" and got.info.experiment_id == exp
    assert client.get_metric_history(run, "eval.m1499")[0].step == 3
    assert {a.path for a in client.list_artifacts(run, "eval")} == {"eval/evaluation.md", "eval/evaluation.csv"}

    pre = client.create_run(exp).info.run_id  # into an existing run: tags, no params; a child run links to it
    assert log_evaluation(uri, {"eval.x": 1.0}, "", "", run_id=pre, tags={"eval.protocols": "knn"}) == pre
    assert client.get_run(pre).data.tags["eval.protocols"] == "knn" and run_exists(uri, pre)
    child = log_evaluation(uri, {"eval.x": 2.0}, "", "", run_id=pre, child=True)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == pre

    missing = "ab" * 16
    assert not run_exists(uri, missing)
    with pytest.raises(RunNotFound, match=missing):
        log_evaluation(uri, {"eval.x": 1.0}, "", "", run_id=missing)
