"""Training from Parquet shards on S3 (moto server), through a real Ray head, tracked on a real MLflow server.

One module, one set of services (its own Ray head, started with the credentials
the last test searches for): shards written to S3 by Ray Data; an uninterrupted
2-worker map-style run from them (its kNN reads the test shards); the same run
interrupted twice and finished: S3 stops answering after its first checkpoint (the
run fails with the resume command), a submitted job ``--resume NAME`` is stopped
(``ray job stop``) after its next checkpoint, and a last ``--resume`` ends with
the per-step losses of the uninterrupted run; a 2-worker streaming run
(``data.loader=ray_data``); last, the secret access key is searched for in
everything these runs wrote.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from siamim.config import load_config
from siamim.orchestration import tracking
from siamim.orchestration.driver.launch import run_pretraining
from siamim.orchestration.errors import LaunchError
from tests.jobs.conftest import S3_BUCKET, ray_head_process
from tests.jobs.helpers import REPO, knn_tolerance, submit_pretrain_cmd

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-" + uuid.uuid4().hex  # a value that appears nowhere unless something leaks it
KEY_ID = "AKIA" + uuid.uuid4().hex[:16].upper()
STEPS = 20  # long enough that a stop issued at a checkpoint lands mid-run on a quiet machine
ARGS = {
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "train.epochs": 2,
    "train.batch_size": 32,
    "data.num_workers": 0,
    "eval.knn.train_subset": 256,
    "eval.knn.test_subset": 256,
    "run.num_workers": 2,
    "train.max_steps": STEPS,
    "model.depth": 2,
    "model.embed_dim": 48,
    "model.num_heads": 2,
    "model.decoder_dim": 48,
    "model.decoder_heads": 2,
    "model.projector_depth": 1,
    "model.predictor_depth": 1,
}


@pytest.fixture(scope="module")
def base_env(base_env):
    """The shared service environment with credentials only this module knows (head, servers, jobs, driver)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    ray_tmp = tempfile.mkdtemp(prefix="srt-", dir="/tmp")  # this module's head: its own session files
    yield {**base_env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_TMPDIR": ray_tmp}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(base_env, service_dir):
    """This module's own Ray head, started with the credentials the leak test searches for."""
    with ray_head_process(base_env, service_dir) as head:
        yield head


@pytest.fixture(scope="module")
def shards(ray_driver, s3_server, fashion_mnist_available):
    from siamim.orchestration.data.prepare import prepare

    root = f"s3://{S3_BUCKET}/fmnist?endpoint_override={s3_server}&scheme=http"
    manifest = prepare("fashion_mnist", None, root, rows_per_shard=256, row_group_rows=64, limit=512)
    assert manifest["splits"]["train"]["count"] == 512
    return root


def cfg_for(shards: str, **overrides):
    return load_config("tiny", {**ARGS, "data.dataset": "parquet", "data.root": shards, **overrides})


def storage_for(s3_server: str, prefix: str) -> str:
    return f"s3://{S3_BUCKET}/{prefix}?endpoint_override={s3_server}&scheme=http"


@pytest.fixture(scope="module")
def reference(shards, s3_server, mlflow_server):
    cfg = cfg_for(
        shards, **{"run.storage": storage_for(s3_server, "ref"), "run.name": "ref", "run.experiment": "data-s3"}
    )
    return run_pretraining(cfg, tracking_uri=mlflow_server)


def test_map_style_two_workers_from_s3(reference, mlflow_server):
    assert reference.step == STEPS and reference.knn_top1 > 20.0  # kNN read the train/test shards from S3 (chance 10 %)
    assert [s for s, _ in tracking.metric_history(mlflow_server, reference.mlflow_run_id, "loss")] == list(
        range(1, STEPS + 1)
    )


def _submit(ray_head, base_env, submission_id: str, *args: str, wait: bool = True) -> subprocess.Popen:
    cmd = submit_pretrain_cmd(
        ray_head["dashboard"], submission_id, "--tracking-uri", tracking_uri_of(base_env), *args, wait=wait
    )
    return subprocess.run(cmd, cwd=REPO, env=base_env, capture_output=True, text=True, timeout=420, check=False)


def tracking_uri_of(env) -> str:
    return env["_SIAMIM_TEST_MLFLOW"]


def _checkpoint_steps(s3, prefix: str) -> set[int]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix).get("Contents", [])]
    return {int(m.group(1)) for k in keys if (m := re.search(r"/checkpoint_(\d+)[^/]*/checkpoint\.pt$", k))}


def _moto_pid(endpoint: str) -> int:
    import psutil

    port = endpoint.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if any(a.endswith("moto_server") for a in argv) and port in argv:
            return proc.pid
    raise RuntimeError(f"no moto_server on port {port}")


def test_s3_outage_then_stopped_job_then_resume_matches_the_uninterrupted_run(
    reference, ray_head, base_env, s3_server, shards, mlflow_server
):
    """One run, interrupted twice. 1) S3 stops answering after the first checkpoint (the server is paused):
    the run fails with the resume command, in bounded time. 2) Once S3 answers again, a submitted job
    ``--resume`` continues from S3 and its driver is stopped (``ray job stop``) after its next checkpoint.
    3) A last ``--resume`` finishes: one MLflow run whose per-step losses equal the uninterrupted run's."""
    import boto3
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    storage, prefix = storage_for(s3_server, "cut"), "cut/cut/"
    cfg = cfg_for(shards, **{"run.storage": storage, "run.name": "cut", "run.experiment": "data-s3"})

    # 1. the outage
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = run_pretraining(cfg, tracking_uri=mlflow_server)
        except BaseException as err:  # noqa: BLE001 - reported below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    pid = _moto_pid(s3_server)
    thread.start()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and thread.is_alive() and not _checkpoint_steps(s3, prefix):
            time.sleep(0.2)
        os.kill(pid, signal.SIGSTOP)
        started = time.time()
        thread.join(timeout=300)
        assert not thread.is_alive(), "the run neither failed nor finished within 300 s of the S3 outage"
        outage_s = time.time() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert isinstance(outcome.get("error"), LaunchError), outcome
    assert "--resume cut" in str(outcome["error"]), outcome["error"]
    assert outage_s < 240, outage_s

    # 2. a submitted job resumes from S3; its driver is stopped after its next checkpoint
    before = max(_checkpoint_steps(s3, prefix))
    env = {**base_env, "_SIAMIM_TEST_MLFLOW": mlflow_server}
    job = f"cut-{uuid.uuid4().hex[:6]}"
    proc = _submit(ray_head, env, job, "--storage", storage, "--resume", "cut", wait=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = JobSubmissionClient(ray_head["dashboard"])
    deadline = time.time() + 300
    while time.time() < deadline and max(_checkpoint_steps(s3, prefix)) <= before:
        assert client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        time.sleep(0.3)
    client.stop_job(job)
    while client.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        time.sleep(0.5)
    assert client.get_job_status(job) == JobStatus.STOPPED
    resumed = re.search(r"resuming from checkpoint_\d+ \(step (\d+)", client.get_job_logs(job))
    assert resumed and 0 < int(resumed.group(1)) < STEPS, client.get_job_logs(job)[-3000:]

    # 3. the last resume finishes from where the stopped job got to
    lines: list[str] = []
    done = run_pretraining(
        load_config("tiny", {"run.storage": storage}),
        tracking_uri=mlflow_server,
        resume="cut",
        log=lambda m: lines.append(str(m)),
    )
    assert done.resumed and done.step == STEPS
    assert done.knn_top1 == pytest.approx(reference.knn_top1, abs=knn_tolerance(ARGS["eval.knn.test_subset"]))
    last = re.search(r"resuming from checkpoint_\d+ \(step (\d+)", "\n".join(lines))
    assert last and int(resumed.group(1)) < int(last.group(1)) < STEPS, lines  # the stopped job did train
    exp = MlflowClient(mlflow_server).get_experiment_by_name("data-s3")
    runs = [r for r in MlflowClient(mlflow_server).search_runs([exp.experiment_id]) if r.info.run_name == "cut"]
    assert len(runs) == 1 and runs[0].info.run_id == done.mlflow_run_id
    got = tracking.metric_history(mlflow_server, done.mlflow_run_id, "loss")
    ref = tracking.metric_history(mlflow_server, reference.mlflow_run_id, "loss")
    assert [s for s, _ in got] == list(range(1, STEPS + 1))  # every step once
    for (step, value), (_, ref_value) in zip(got, ref, strict=True):
        assert value == pytest.approx(ref_value, rel=1e-6, abs=1e-7), step


def test_streaming_two_workers_from_s3(shards, s3_server, mlflow_server):
    # Two 0.5-CPU workers leave one of the head's two CPUs to the Ray Data decode/augment tasks.
    cfg = cfg_for(
        shards,
        **{
            "data.loader": "ray_data",
            "run.cpus_per_worker": 0.5,
            "train.max_steps": 4,
            "run.storage": storage_for(s3_server, "stream"),
            "run.name": "stream",
            "run.experiment": "data-s3",
            "data.stream_batch": 32,
            "data.shuffle_buffer": 64,
        },
    )
    summary = run_pretraining(cfg, tracking_uri=mlflow_server)
    assert summary.step == 4 and summary.knn_top1 > 20.0  # chance: 10 %
    losses = tracking.metric_history(mlflow_server, summary.mlflow_run_id, "loss")
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(0 < v < 1e3 for _, v in losses)


def test_secret_appears_nowhere(reference, ray_head, base_env, s3_server, mlflow_server, service_dir):
    """Runs above used KEY_ID/SECRET from the environment: search S3, MLflow, Ray job metadata and every log."""
    import boto3
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    hits = []
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    for obj in s3.list_objects_v2(Bucket=S3_BUCKET).get("Contents", []):
        body = s3.get_object(Bucket=S3_BUCKET, Key=obj["Key"])["Body"].read()
        if SECRET.encode() in body or KEY_ID.encode() in body:
            hits.append(f"s3://{S3_BUCKET}/{obj['Key']}")
    client = MlflowClient(mlflow_server)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            text = repr(run.data.params) + repr(run.data.tags) + repr(run.info)
            if SECRET in text or KEY_ID in text:
                hits.append(f"mlflow run {run.info.run_id} params/tags")
    jobs = JobSubmissionClient(ray_head["dashboard"])
    for job in jobs.list_jobs():
        if SECRET in repr(job) or (job.submission_id and SECRET in jobs.get_job_logs(job.submission_id)):
            hits.append(f"ray job {job.submission_id}")
    roots = [service_dir, Path(base_env["RAY_TMPDIR"])]
    for root in roots:  # MLflow's database and artifacts, moto's and Ray's logs, Ray's session files
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if SECRET.encode() in data:
                    hits.append(str(path))
    assert not hits, f"the secret access key leaked into: {hits[:20]}"
