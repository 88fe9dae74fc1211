"""``ray job submit`` of jobs/pretrain.py to a running head, tracked on an MLflow server."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests_jobs_helpers import BIN, REPO, TINY_ARGS

pytestmark = pytest.mark.slow


def test_ray_job_submit_runs_pretrain_to_succeeded(ray_head, mlflow_server, fashion_mnist_available, tmp_path,
                                                     base_env):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission_id = f"siamim-test-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "runs"
    entrypoint = [sys.executable, "jobs/pretrain.py", "--config", "configs/tiny.yaml", "--storage", str(storage),
                  "--tracking-uri", mlflow_server, "--experiment", "e2e-submit", "--name", "submitted",
                  "train.max_steps=2", *TINY_ARGS]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(REPO),
           "--submission-id", submission_id, "--", *entrypoint]
    proc = subprocess.run(cmd, cwd=REPO, env=base_env, capture_output=True, text=True, timeout=420)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert JobSubmissionClient(ray_head["dashboard"]).get_job_status(submission_id) == JobStatus.SUCCEEDED
    assert "kNN top-1" in output and "MLflow run" in output  # the job's final summary, streamed back

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("e2e-submit")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "submitted"
    assert run.data.tags["ray.submission_id"] == submission_id
    assert "knn_top1" in run.data.metrics
    assert [s for s, _ in [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]
    assert (storage / "submitted" / "checkpoint_00000002" / "checkpoint.pt").is_file()
