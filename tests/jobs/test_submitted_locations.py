"""``ray job submit`` of jobs/pretrain.py without lasting locations, on a real Ray head: exit 2 before training.

A submitted driver runs in Ray's temporary copy of the working directory; with no
``--storage`` (default ``runs/ray``) or no tracking server (default ``./mlflow.db``) the
job used to train, exit 0 and leave its checkpoints and MLflow store in that copy.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.jobs.helpers import REPO, TINY_ARGS, submit_pretrain_cmd

pytestmark = pytest.mark.slow

DEADLINE_S = 150  # the refusal comes before Ray Train starts: tens of seconds on a loaded 2-core box


def _submit(ray_head, env, submission_id: str, *args: str) -> None:
    cmd = submit_pretrain_cmd(ray_head["dashboard"], submission_id, "train.max_steps=2", *TINY_ARGS, *args, wait=False)
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True)


def _wait_terminal(client, submission_ids: list[str], deadline_s: float) -> dict:
    from ray.job_submission import JobStatus

    start, done = time.time(), {}
    while time.time() - start < deadline_s and len(done) < len(submission_ids):
        for sid in submission_ids:
            if sid not in done:
                info = client.get_job_info(sid)
                if info.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    done[sid] = (info, time.time() - start)
        time.sleep(1.0)
    return done


def test_submitted_job_without_lasting_locations_exits_2_before_training(ray_head, base_env, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head["dashboard"])
    no_storage, no_tracking = (f"siamim-loc-{what}-{uuid.uuid4().hex[:6]}" for what in ("storage", "tracking"))
    _submit(ray_head, base_env, no_storage)  # neither --storage nor --tracking-uri: the storage is named first
    _submit(ray_head, base_env, no_tracking, "--storage", str(tmp_path / "runs"))  # storage fine, MLflow default
    try:
        done = _wait_terminal(client, [no_storage, no_tracking], DEADLINE_S)
        assert set(done) == {no_storage, no_tracking}, f"not refused within {DEADLINE_S} s: {sorted(done)}"
        for sid, needle in (
            (no_storage, "--storage runs/ray (the default) is "),
            (no_tracking, "the MLflow store (no --tracking-uri, no MLFLOW_TRACKING_URI: the default sqlite:///"),
        ):
            info, _ = done[sid]
            logs = client.get_job_logs(sid)
            assert info.status == JobStatus.FAILED and info.driver_exit_code == 2, (info, logs[-3000:])
            assert "exit code 2" in info.message
            errors = [line for line in logs.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and needle in errors[0] and "Ray's temporary copy" in errors[0], logs[-3000:]
            assert "_ray_pkg_" in errors[0] and "RayTrainWorker" not in logs and "Ray ready" not in logs
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written
    finally:
        for sid in (no_storage, no_tracking):
            if client.get_job_status(sid) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                client.stop_job(sid)
