"""Logging evaluation results to MLflow (local sqlite store): metric batches, runs, artifacts."""

from __future__ import annotations

import pytest

from siamim.orchestration.tracking.evaluation import RunNotFound, log_evaluation, record_evaluation, run_exists


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


def test_record_evaluation_numbers_child_runs_and_sets_the_parents_headline(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("eval-rec", artifact_location=(tmp_path / "art").as_uri())
    pre = client.create_run(exp, run_name="pretrain").info.run_id
    client.create_run(exp, run_name="other child", tags={"mlflow.parentRunId": pre})  # not an evaluation
    records = [
        record_evaluation(
            uri,
            {"eval.knn_top1": v},
            f"| {v} |\n",
            "k,v\n",
            pretraining_run_id=pre,
            name="e",
            step=4,
            params={"eval.train_limit": limit},
            tags={"eval.protocols": "knn"},
        )
        for v, limit in ((50.0, 100), (60.0, None))
    ]
    assert [r.run_name for r in records] == ["evaluation-1-e", "evaluation-2-e"]
    for record, limit in zip(records, ("100", "None"), strict=True):
        run = client.get_run(record.run_id)
        assert run.data.tags["mlflow.parentRunId"] == pre and run.data.params == {"eval.train_limit": limit}
        assert run.info.status == "FINISHED"
    parent = client.get_run(pre)
    assert parent.data.metrics["eval.knn_top1"] == 60.0 and parent.data.tags["eval.from_run_id"] == records[1].run_id
    assert parent.data.tags["eval.protocols"] == "knn" and not parent.data.params
    assert [(m.step, m.value) for m in client.get_metric_history(pre, "eval.knn_top1")] == [(4, 50.0), (4, 60.0)]

    alone = record_evaluation(uri, {"eval.knn_top1": 1.0}, "", "", pretraining_run_id=None, experiment="eval-rec")
    assert alone.parent_id is None and "mlflow.parentRunId" not in client.get_run(alone.run_id).data.tags
    with pytest.raises(RunNotFound, match="ab" * 16):
        record_evaluation(uri, {"eval.x": 1.0}, "", "", pretraining_run_id="ab" * 16)
