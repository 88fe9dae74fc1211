"""Live metrics (the driver-side MLflow stream) and a tracking server that blinks, end to end.

A 2-worker ``tiny`` run with one checkpoint only, at its last step, against a real MLflow server
this module owns: its loss curve is in MLflow while no checkpoint exists yet; the server stopped
for 30 s mid-run and started again loses nothing; stopped for good, the run still finishes, keeps
what MLflow lacks in its storage, and a later ``--resume`` writes it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from siamim.config import load_config
from siamim.orchestration import tracking
from siamim.orchestration.driver.launch import run_pretraining
from siamim.orchestration.runs import storage as st
from siamim.orchestration.tracking import stream as ms
from tests.jobs.conftest import MlflowServer
from tests.jobs.helpers import TINY, TINY_ARGS

pytestmark = pytest.mark.slow

STEPS = 40


@pytest.fixture()
def server(base_env, tmp_path):
    s = MlflowServer(base_env, tmp_path / "mlflow", tmp_path / "mlflow.log")
    s.start()
    yield s
    s.stop()


def live_cfg(storage, name: str, **extra):
    overrides = {
        **TINY,
        "train.max_steps": STEPS,
        "data.train_subset": 2048,  # 64 steps per epoch
        "train.log_every": 5,
        "train.checkpoint_every": 1000,  # the only checkpoint is the last step's
        "run.storage": str(storage),
        "run.name": name,
        "run.experiment": "e2e-live",
        **extra,
    }
    return load_config("tiny", overrides)


def in_background(fn):
    out: dict = {}

    def target():
        try:
            out["summary"] = fn()
        except BaseException as err:  # re-raised by the test
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def first_points_before_any_checkpoint(url: str, storage, name: str, thread, out, timeout: float = 600.0) -> list:
    """Poll MLflow while the job runs: the loss points it holds while no checkpoint directory exists yet."""
    client = MlflowClient(url)
    end = time.time() + timeout
    while time.time() < end and thread.is_alive():
        exp = client.get_experiment_by_name("e2e-live")
        runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'") if exp else []
        if runs:
            points = tracking.metric_history(url, runs[0].info.run_id, "loss")
            checkpoints = list((storage / name).glob("checkpoint_*"))
            if points:
                return points if not checkpoints else []
        time.sleep(0.5)
    if "error" in out:
        raise out["error"]
    return []


def finished(thread, out, timeout: float = 900.0):
    thread.join(timeout)
    assert not thread.is_alive(), "the job did not finish"
    if "error" in out:
        raise out["error"]
    return out["summary"]


def test_curve_is_live_and_a_30_s_server_outage_loses_nothing(ray_driver, fashion_mnist_available, server, tmp_path):
    storage = tmp_path / "runs"
    started = time.time()
    thread, out = in_background(lambda: run_pretraining(live_cfg(storage, "blink"), tracking_uri=server.url))
    points = first_points_before_any_checkpoint(server.url, storage, "blink", thread, out)
    seen_after = time.time() - started
    assert points and min(s for s, _ in points) <= 5 and max(s for s, _ in points) < STEPS, points
    server.stop()  # mid-run: training goes on, the stream queues and retries
    time.sleep(30)
    server.start()
    summary = finished(thread, out)
    assert summary.step == STEPS and summary.knn_top1 is not None
    for key in ("loss", "lr", "grad_norm"):
        history = tracking.metric_history(server.url, summary.mlflow_run_id, key)
        assert [s for s, _ in history] == list(range(1, STEPS + 1)), key  # every step once
    run = MlflowClient(server.url).get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and "knn_top1" in run.data.metrics
    assert not st.exists(st.resolve_storage(str(storage)), "blink", ms.PENDING)
    first_step = run.data.metrics["time_to_first_step_s"]
    print(
        f"first loss point seen in MLflow {seen_after:.1f} s after launch, {seen_after - first_step:.1f} s after "
        f"the first step (steps {[s for s, _ in points]})"
    )


def test_server_gone_for_good_then_resume_writes_what_was_kept(ray_driver, fashion_mnist_available, server, tmp_path):
    storage = tmp_path / "runs"
    cfg = live_cfg(storage, "gone", **{"run.tracking_deadline_s": 3})
    thread, out = in_background(lambda: run_pretraining(cfg, tracking_uri=server.url))
    assert first_points_before_any_checkpoint(server.url, storage, "gone", thread, out)
    server.stop()
    summary = finished(thread, out)  # the job finishes without its tracking server
    assert summary.step == STEPS and summary.registered is None
    where = st.resolve_storage(str(storage))
    kept = st.read_json(where, "gone", ms.PENDING)["records"]  # the metrics MLflow lacks, then the run's end
    assert any(r["metrics"] for r in kept) and "end" in kept[-1]

    server.start()
    again = run_pretraining(load_config("tiny", {"run.storage": str(storage)}), tracking_uri=server.url, resume="gone")
    assert again.mlflow_run_id == summary.mlflow_run_id and again.step == STEPS
    history = tracking.metric_history(server.url, summary.mlflow_run_id, "loss")
    assert [s for s, _ in history] == list(range(1, STEPS + 1))
    run = MlflowClient(server.url).get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and "knn_top1" in run.data.metrics
    assert "encoder" in {a.path for a in MlflowClient(server.url).list_artifacts(summary.mlflow_run_id)}
    assert not st.exists(where, "gone", ms.PENDING)


def test_the_first_point_benchmark_sees_step_1_before_any_checkpoint(base_env, tmp_path):
    """``benchmarks/first_point.py`` times a real job to its first loss point in MLflow and says no checkpoint
    existed then (a figure is printed; how fast is the benchmark's business, not this test's)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "first_point.py"
    overrides = [a for a in TINY_ARGS if not a.startswith("train.checkpoint_every=")] + ["train.checkpoint_every=1000"]
    done = subprocess.run(
        [sys.executable, str(script), "--runs", "1", *overrides],
        env=base_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figure = re.search(r"loss point of step 1 in MLflow ([0-9.]+) s later; checkpoints then: 0", done.stdout)
    assert figure and float(figure.group(1)) > 0, done.stdout[-3000:]
    assert "median" in done.stdout.splitlines()[-1]
