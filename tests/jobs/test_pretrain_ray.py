"""End-to-end pretraining through Ray Train (2 CPU workers, gloo) tracked in MLflow.

One uninterrupted reference run; a run stopped by ``train.max_steps`` and resumed
(checkpoints on S3, served by moto); a run whose workers raise mid-run and that
Ray restarts from the last checkpoint (``SIAMIM_FAIL_AT_STEP``). Per-step losses of
all three must agree exactly (CPU, same seed) and every step must be in MLflow
exactly once. Last, ``ray job submit`` of jobs/pretrain.py to the same head,
tracked on an MLflow server. All share the session's Ray head (conftest.py).
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid

import pytest
import torch

from siamim.checkpoint import (
    CheckpointError,
    export_encoder,
    load_checkpoint,
    load_encoder,
    verify_checkpoint,
)
from siamim.config import flatten, load_config
from siamim.foreign import read_checkpoint
from siamim.orchestration import tracking
from siamim.orchestration.driver.launch import run_pretraining
from siamim.orchestration.errors import LaunchInputError
from tests.jobs.fault_hooks import hook_env
from tests.jobs.helpers import REPO, TINY_ARGS, knn_tolerance
from tests.jobs.helpers import TINY as TINY_RUN

pytestmark = pytest.mark.slow

STEPS = 4
# the exported encoder (not the training state, which stays in Ray storage): timm's save_for_hf folder
ENCODER_ARTIFACTS = ["encoder/config.json", "encoder/model.safetensors"]
TINY = {**TINY_RUN, "train.max_steps": STEPS, "run.keep_checkpoints": 2}


def tiny_cfg(**overrides):
    return load_config("tiny", {**TINY, **overrides})


def losses(uri: str, run_id: str) -> list[tuple[int, float]]:
    return tracking.metric_history(uri, run_id, "loss")


def runs_named(uri: str, experiment: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def reference(ray_driver, fashion_mnist_available, tracking_uri, tmp_path_factory):
    """An uninterrupted run of STEPS steps (system metrics sampled every second: the run lasts seconds)."""
    storage = tmp_path_factory.mktemp("ray-storage")
    cfg = tiny_cfg(**{"run.storage": str(storage), "run.name": "reference", "run.experiment": "e2e-reference"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        summary = run_pretraining(cfg, tracking_uri=tracking_uri, register="tiny-reference", checkpoint_pictures=True)
    return summary, storage


def test_two_worker_run_is_tracked_in_mlflow(reference, tracking_uri):
    from mlflow.tracking import MlflowClient

    summary, storage = reference
    client = MlflowClient(tracking_uri)
    runs = runs_named(tracking_uri, "e2e-reference", "reference")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == summary.mlflow_run_id and run.info.status == "FINISHED"

    # the resolved config as dotted params
    cfg = tiny_cfg(**{"run.storage": str(storage), "run.name": "reference", "run.experiment": "e2e-reference"})
    expected = {k: str(list(v) if isinstance(v, tuple) else v) for k, v in flatten(cfg).items()}
    assert run.data.params == expected

    # per-step metrics from rank 0 only: each step exactly once
    for key in ("loss", "lr", "momentum", "grad_norm", "images_per_s", "epoch"):
        history = tracking.metric_history(tracking_uri, summary.mlflow_run_id, key)
        assert [s for s, _ in history] == list(range(1, STEPS + 1)), key
        assert all(math.isfinite(v) for _, v in history)
    assert summary.step == STEPS

    # kNN top-1: logged, in the summary, far above chance (10 %) on Fashion-MNIST
    assert run.data.metrics["knn_top1"] == pytest.approx(summary.knn_top1)
    assert summary.knn_top1 > 20.0
    assert summary.time_to_first_step_s is not None and summary.time_to_first_step_s > 0
    # MLflow's system metrics from rank 0's monitor
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)

    # tags and artifacts
    tags = run.data.tags
    assert tags["ray.job_id"] and tags["siamim.run_name"] == "reference"
    assert len(tags["mlflow.source.git.commit"]) == 40 and len(tags["siamim.source_digest"]) == 64
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id)}
    assert {"config.yaml", "encoder", "pictures", "report.html"} <= artifacts
    # the feature pictures: artifacts (the latest), and MLflow images at each checkpoint (checkpoint_pictures;
    # checkpoint_every=2), the last one being the final step's: the image slider shows steps 2 and 4
    pictures = ["pictures/attention.png", "pictures/correspondence.png", "pictures/pca.png"]
    assert sorted(a.path for a in client.list_artifacts(summary.mlflow_run_id, "pictures")) == pictures
    images = [a.path for a in client.list_artifacts(summary.mlflow_run_id, "images")]
    logged = sorted(p[len("images/") : p.index("+timestamp")] for p in images if p.endswith(".png") and "+step+" in p)
    assert logged == sorted(f"{name}+step+{s}" for name in ("pca", "correspondence", "attention") for s in (2, 4))
    assert [a.path for a in client.list_artifacts(summary.mlflow_run_id, "encoder")] == ENCODER_ARTIFACTS
    # --register: a version of the registered model whose source is the run's encoder/
    assert summary.registered == "models:/tiny-reference/1" == tags["siamim.registered_model"]
    version = client.get_model_version("tiny-reference", "1")
    assert version.run_id == summary.mlflow_run_id and version.source == f"runs:/{summary.mlflow_run_id}/encoder"
    assert tags["siamim.checkpoint"] == summary.checkpoint == str(storage / "reference" / "checkpoint_00000004")


def test_checkpoint_restores(reference, tracking_uri, tmp_path):
    import mlflow
    import ray.train
    import timm

    summary, storage = reference
    # Ray kept the last K=2 checkpoints, one per checkpoint_every=2 steps
    assert sorted(p.name for p in (storage / "reference").glob("checkpoint_0*")) == [
        "checkpoint_00000002",
        "checkpoint_00000004",
    ]
    state = load_checkpoint(summary.checkpoint)
    assert state["step"] == STEPS and "mlflow_run_id" not in state  # the run id is in Ray's metadata
    metadata = ray.train.Checkpoint(summary.checkpoint).get_metadata()
    assert metadata["mlflow_run_id"] == summary.mlflow_run_id
    assert set(metadata) == {"mlflow_run_id"}  # the metrics went to MLflow live, not into the checkpoint
    encoder, cfg = load_encoder(state)
    with torch.no_grad():
        feats = encoder.forward_features(torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size))
    assert feats.shape[0] == 2 and torch.isfinite(feats).all()

    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        run_id=summary.mlflow_run_id, artifact_path="encoder", dst_path=str(tmp_path)
    )
    # the exported encoder: timm alone rebuilds it, with the final state's weights
    vit = timm.create_model(f"local-dir:{local}", pretrained=True).eval()
    weights = export_encoder(state)
    assert vit.state_dict().keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(value, vit.state_dict()[key]), key
    from_mlflow = read_checkpoint(local)  # what jobs/evaluate.py --checkpoint <run id> reads
    assert from_mlflow["step"] == STEPS and from_mlflow["kind"] == "encoder" and "optimizer" not in from_mlflow
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    with torch.no_grad():
        assert torch.equal(load_encoder(from_mlflow)[0].forward_features(x), encoder.forward_features(x))


def test_stopped_run_resumes_same_mlflow_run_and_matches(reference, tracking_uri, s3_server):
    """Stop at step 2 (max_steps), resume to STEPS: same MLflow run, losses equal the uninterrupted run's."""
    ref_summary, _ = reference
    storage = f"s3://siamim-test/resume?endpoint_override={s3_server}&scheme=http"
    cfg = tiny_cfg(
        **{"run.storage": storage, "run.name": "resume", "run.experiment": "e2e-resume", "train.max_steps": 2}
    )
    first = run_pretraining(cfg, tracking_uri=tracking_uri)
    assert first.step == 2 and first.checkpoint.startswith("s3://siamim-test/resume/resume/checkpoint_")

    with pytest.raises(LaunchInputError, match="already exists"):  # same name without --resume
        run_pretraining(cfg, tracking_uri=tracking_uri)

    second = run_pretraining(
        tiny_cfg(**{"run.storage": storage}),
        tracking_uri=tracking_uri,
        resume="resume",
        resume_overrides={"train.max_steps": STEPS},
    )
    assert second.resumed and second.step == STEPS
    assert second.mlflow_run_id == first.mlflow_run_id
    assert len(runs_named(tracking_uri, "e2e-resume", "resume")) == 1

    resumed = losses(tracking_uri, second.mlflow_run_id)
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    reference_losses = losses(tracking_uri, ref_summary.mlflow_run_id)
    for (step, value), (ref_step, ref_value) in zip(resumed, reference_losses, strict=True):
        assert step == ref_step and value == pytest.approx(ref_value, rel=1e-6, abs=1e-7), step
    starts = tracking.metric_history(tracking_uri, second.mlflow_run_id, "restored_from_step")
    assert [v for _, v in starts] == [0.0, 2.0]


def test_worker_failure_restarts_from_last_checkpoint(reference, tracking_uri, tmp_path, monkeypatch):
    """A worker raises at step 3; FailureConfig restarts the group from the step-2 checkpoint; it finishes."""
    ref_summary, _ = reference
    for key, value in hook_env("fail_once_at_step_3").items():
        monkeypatch.setenv(key, value)
    cfg = tiny_cfg(
        **{"run.storage": str(tmp_path), "run.name": "fault", "run.experiment": "e2e-fault", "run.max_failures": 1}
    )
    summary = run_pretraining(cfg, tracking_uri=tracking_uri)
    assert summary.step == STEPS
    # the restarted run is the uninterrupted one: the same kNN top-1 (up to a tie flipped by a last-bit difference)
    assert summary.knn_top1 == pytest.approx(ref_summary.knn_top1, abs=knn_tolerance(cfg.eval.knn.test_subset))

    starts = tracking.metric_history(tracking_uri, summary.mlflow_run_id, "restored_from_step")
    assert [v for _, v in starts] == [0.0, 2.0]  # the failure happened and Ray restored step 2
    history = losses(tracking_uri, summary.mlflow_run_id)
    assert [s for s, _ in history] == list(range(1, STEPS + 1))  # nothing lost, nothing twice
    reference_losses = losses(tracking_uri, ref_summary.mlflow_run_id)
    for (step, value), (_, ref_value) in zip(history, reference_losses, strict=True):
        assert value == pytest.approx(ref_value, rel=1e-6, abs=1e-7), step
    assert len(runs_named(tracking_uri, "e2e-fault", "fault")) == 1


def test_ray_job_submit_runs_pretrain_to_succeeded(
    ray_head, mlflow_server, fashion_mnist_available, tmp_path, base_env
):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission_id = f"siamim-test-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "runs"
    entrypoint = [
        sys.executable,
        "jobs/pretrain.py",
        "--config",
        "configs/tiny.yaml",
        "--storage",
        str(storage),
        "--tracking-uri",
        mlflow_server,
        "--experiment",
        "e2e-submit",
        "--name",
        "submitted",
        "train.max_steps=2",
        *TINY_ARGS,
    ]
    # .git is not uploaded: jobs/submit.py passes the checkout's commit as job metadata, no extra typing
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "submit.py"),
        "--address",
        ray_head["dashboard"],
        "--submission-id",
        submission_id,
        "--python",
        sys.executable,
        "--",
        *entrypoint[2:],
    ]
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
    assert len(commit) == 40 and run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["siamim.git_dirty"] in ("true", "false")
    assert len(run.data.tags["siamim.source_digest"]) == 64
    assert run.data.tags["ray.working_dir"].startswith("gcs://_ray_pkg_")
    assert "knn_top1" in run.data.metrics
    assert [s for s, _ in [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "encoder")] == ENCODER_ARTIFACTS
    assert load_checkpoint(storage / "submitted" / "checkpoint_00000002")["step"] == 2


def test_failure_without_retries_marks_the_mlflow_run_failed(
    ray_driver, fashion_mnist_available, tracking_uri, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from siamim.orchestration.errors import LaunchError

    for key, value in hook_env("fail_once_at_step_3").items():
        monkeypatch.setenv(key, value)
    cfg = tiny_cfg(
        **{
            "run.storage": str(tmp_path),
            "run.name": "no-retry",
            "run.experiment": "e2e-no-retry",
            "run.max_failures": 0,
        }
    )
    with pytest.raises(LaunchError, match="(?s)InjectedFault.*--resume no-retry"):
        run_pretraining(cfg, tracking_uri=tracking_uri)
    (run,) = runs_named(tracking_uri, "e2e-no-retry", "no-retry")
    assert run.info.status == "FAILED"
    # the steps up to the last checkpoint are in MLflow once; the checkpoint is there to resume from
    assert [s for s, _ in losses(tracking_uri, run.info.run_id)] == [1, 2]
    assert load_checkpoint(tmp_path / "no-retry" / "checkpoint_00000002")["step"] == 2
    assert MlflowClient(tracking_uri).get_run(run.info.run_id).data.tags["siamim.run_name"] == "no-retry"


def test_damaged_checkpoint_fallback_then_train_longer(ray_driver, fashion_mnist_available, tracking_uri, tmp_path):
    """A 4-step plan; its latest checkpoint truncated -> a resume with --more-steps 4 verifies, skips it,
    restarts from step 2 and grows the plan to 6 with the documented schedule; then there is nothing left to
    train. MLflow: every step once, one kNN point per final step, and the description shows the configuration
    the run finished with."""
    from mlflow.tracking import MlflowClient

    from siamim.train.schedules import lr_at, momentum_at

    cfg = tiny_cfg(
        **{
            "run.storage": str(tmp_path),
            "run.name": "longer",
            "run.experiment": "e2e-longer",
            "train.max_steps": None,
            "train.epochs": 0.25,
            "run.keep_checkpoints": 3,
        }
    )  # 16 steps/epoch
    first = run_pretraining(cfg, tracking_uri=tracking_uri)
    assert first.step == 4
    latest = tmp_path / "longer" / "checkpoint_00000004" / "checkpoint.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3])  # an interrupted copy
    with pytest.raises(CheckpointError, match="truncated"):  # its record still vouches for the full file
        verify_checkpoint(latest)

    # past the plan: names the flag to use, counted from the intact checkpoint it would resume from (step 2)
    with pytest.raises(LaunchInputError, match="--more-steps 38"):
        run_pretraining(
            tiny_cfg(**{"run.storage": str(tmp_path)}),
            tracking_uri=tracking_uri,
            resume="longer",
            resume_overrides={"train.max_steps": 40},
        )

    lines: list[str] = []
    longer = run_pretraining(
        tiny_cfg(**{"run.storage": str(tmp_path)}),
        tracking_uri=tracking_uri,
        resume="longer",
        more_steps=4,
        log=lambda m: lines.append(str(m)),
    )
    text = "\n".join(lines)
    assert "skipping damaged checkpoint checkpoint_00000004" in text and "truncated" in text, text
    assert "resuming from checkpoint_00000002" in text and "the plan grows to 6 steps" in text, text
    assert longer.step == 6 and longer.mlflow_run_id == first.mlflow_run_id
    assert longer.knn_top1 > 20.0 and longer.time_to_first_step_s is not None  # chance: 10 %
    assert latest.read_bytes() == data[: len(data) // 3]  # the damaged file is left as it was (nothing deleted)
    assert load_checkpoint(tmp_path / "longer" / "checkpoint_00000004_r")["step"] == 4  # the retrained step 4

    with pytest.raises(LaunchInputError, match="nothing to train.*--more-steps"):
        run_pretraining(tiny_cfg(**{"run.storage": str(tmp_path)}), tracking_uri=tracking_uri, resume="longer")

    run_id = first.mlflow_run_id
    assert [s for s, _ in losses(tracking_uri, run_id)] == list(range(1, 7))  # each step once
    for key in ("lr", "momentum", "epoch"):
        assert [s for s, _ in tracking.metric_history(tracking_uri, run_id, key)] == list(range(1, 7)), key
    assert [s for s, _ in tracking.metric_history(tracking_uri, run_id, "knn_top1")] == [4, 6]
    assert tracking.metric_history(tracking_uri, run_id, "restored_from_step") == [(0, 0.0), (2, 2.0)]

    # the documented schedule: the 4-step plan grows to 6 from the checkpoint it continues (step 2), a restart
    # whose lr ramps over the warm-up length (2 steps) from the lr that checkpoint last used to the re-planned
    # cosine (warm-up 2, total 6); EMA momentum follows the re-planned cosine. MLflow's point at step k is the
    # lr of step index k - 1; steps 3 and 4 keep the points of the first launch (each step is logged once).
    peak = cfg.optim.blr * cfg.train.batch_size / 256
    lr = dict(tracking.metric_history(tracking_uri, run_id, "lr"))
    plan = load_checkpoint(longer.checkpoint)["plan"]
    assert plan["total_steps"] == 6 and plan["warmup_steps"] == 2
    assert plan["restarts"] == [{"step": 2, "from_lr": pytest.approx(lr[2]), "steps": 2, "old_total_steps": 4}]
    curve = lambda i: lr_at(i, 6, 2, peak, cfg.optim.min_lr)  # noqa: E731
    assert lr[5] == pytest.approx(curve(4)) and lr[6] == pytest.approx(curve(5))
    momentum = dict(tracking.metric_history(tracking_uri, run_id, "momentum"))
    assert momentum[6] == pytest.approx(momentum_at(5, 6, cfg.optim.ema_m0))

    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "0.25"
    assert "| train.epochs | 0.375 | 0.25 |" in run.data.tags["mlflow.note.content"]
    assert load_checkpoint(longer.checkpoint)["config"]["train"]["epochs"] == 0.375


def test_cluster_that_cannot_fit_the_workers_fails_after_the_bounded_wait(
    ray_head, fashion_mnist_available, tmp_path, base_env
):
    """On a cluster (an autoscaler might add nodes) the job waits --wait-for-resources seconds, then fails:
    exit 2, the numbers and the fix, and its MLflow run FAILED (not RUNNING for ever)."""
    import time

    from mlflow.tracking import MlflowClient

    db = tmp_path / "m.db"
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "pretrain.py"),
            "--address",
            ray_head["gcs"],
            "--storage",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{db}",
            "--name",
            "big",
            "--cpus-per-worker",
            "2",
            "--wait-for-resources",
            "3",
            "train.max_steps=2",
            *TINY_ARGS,
        ],
        cwd=tmp_path,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    expected = "needs 4 CPUs; the Ray cluster has 2 after waiting 3 s at the start (--wait-for-resources)"
    assert expected in out, out[-3000:]
    assert time.time() - start < 240
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED"
