"""The ablation grid end to end: real Ray head (2 CPUs), real Ray Tune + Ray Train, real MLflow store.

A 2-row x 2-seed grid whose driver is killed (SIGKILL) once a trial has finished, then continued with
``--resume``. One of its trials raises on every attempt (a worker hook, tests/jobs/fault_hooks.py). The grid
completes with exactly 4 child runs under one parent; the trials finished before the kill are not
trained again (their start counter stays at 1); the raising trial is retried ``--max-retries`` times in
the same child run, then FAILED, while the others finish; the parent holds the table, the paired
differences and the plot; every trial directory has Tune's result files and TensorBoard event files.
(One grid covers completion, resume and failure: each trial start costs a Ray Train worker group.)

Tiny budget: the SMALL model of tests/conftest.py, 2 steps, kNN and the nearest centroid (the same cached
features) on a few hundred images; both reach the table (each protocol's declared headline is a column).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from siamim.orchestration.ablation.table import mean_std
from tests.conftest import SMALL
from tests.jobs.fault_hooks import FAILING_TRIAL, hook_env
from tests.jobs.helpers import REPO

pytestmark = pytest.mark.slow

ABLATE = REPO / "jobs" / "ablate.py"
TINY = [o for o in SMALL if not o.startswith("train.checkpoint_every")] + [
    "train.checkpoint_every=1",
    "data.train_subset=256",
    "eval.knn.train_subset=300",
    "eval.knn.test_subset=200",
    "eval.train_limit=300",
    "eval.test_limit=200",
    "eval.batch_size=256",
]
GRID_FLAGS = ["--steps", "2", "--protocols", "knn,centroid", "--workers-per-trial", "1", "--max-concurrent", "2"]


def ablate_cmd(ray_head, storage, db, *args) -> list[str]:
    return [
        sys.executable,
        str(ABLATE),
        "--address",
        ray_head["gcs"],
        "--storage",
        str(storage),
        "--tracking-uri",
        f"sqlite:///{db}",
        *args,
    ]


def children(db, parent_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_of(db, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("siamim-ablation")
    (run,) = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("ablation.kind") == "parent" and r.info.run_name == name
    ]
    return run


def finished_children(db, record) -> list:
    from mlflow.tracking import MlflowClient

    if not record.exists():  # the driver creates the store and the parent run first (no migration race)
        return []
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("siamim-ablation")
    if exp is None:
        return []
    return [
        r
        for r in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
        if "ablation.trial" in r.data.tags
    ]


def test_grid_killed_resumed_with_a_failing_trial(ray_head, base_env, fashion_mnist_available, tmp_path):
    from mlflow.tracking import MlflowClient

    storage, db, name = tmp_path / "abl", tmp_path / "mlflow.db", "grid"
    env = {**base_env, **hook_env("fail_trial_j_s1")}  # both drivers: trial j/1 fails on every attempt
    cmd = ablate_cmd(
        ray_head,
        storage,
        db,
        "--rows",
        "j,i",
        "--seeds",
        "2",
        "--name",
        name,
        "--max-retries",
        "1",
        *GRID_FLAGS,
        *TINY,
    )
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    record = storage / name / "siamim_ablation.json"
    while time.time() < deadline and first.poll() is None and not finished_children(db, record):
        time.sleep(1.0)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]  # still mid-grid
    done_before = {r.data.tags["ablation.trial"] for r in finished_children(db, record)}
    assert done_before and len(done_before) < 3
    os.kill(first.pid, signal.SIGKILL)  # the driver dies; Ray stops its trials
    first.wait(30)

    proc = subprocess.run(
        ablate_cmd(ray_head, storage, db, "--resume", name),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-5000:]  # one trial failed after its retries; the grid still finished
    assert "resuming grid 'grid'" in out
    assert "1 of 4 trials failed after 1 retries: j/1" in out

    client = MlflowClient(f"sqlite:///{db}")
    parent = parent_of(db, name)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ablation.rows"] == "i,j" and parent.data.params["ablation.seeds"] == "2"
    assert len(parent.data.tags["mlflow.source.git.commit"] or "") == 40
    assert parent.data.tags["ablation.failed_trials"] == "j/1"
    kids = {r.data.tags["ablation.trial"]: r for r in children(db, parent.info.run_id)}
    assert len(children(db, parent.info.run_id)) == 4 and set(kids) == {"i/0", "i/1", "j/0", "j/1"}  # no duplicates
    failed = kids.pop("j/1")
    assert (
        failed.info.status == "FAILED"
        and f"injected failure of trial {FAILING_TRIAL}" in failed.data.tags["ablation.error"]
    )
    assert int(failed.data.tags["ablation.starts"]) >= 2  # the first attempt and its retry, one child run
    for key, run in kids.items():
        assert run.info.status == "FINISHED", key
        # kNN once per trial: the evaluation's (the protocols include knn), not also pretraining's
        assert "eval.knn_top1" in run.data.metrics and "knn_top1" not in run.data.metrics
        assert "eval.centroid_top1" in run.data.metrics
        assert "time_to_first_step_s" in run.data.metrics and "knn_eval_s" not in run.data.metrics
        assert run.data.params["train.seed"] == run.data.tags["ablation.seed"]
        assert run.data.params["ablation.row"] == run.data.tags["ablation.row"]
        assert run.data.tags["siamim.checkpoint"].endswith("checkpoint_00000002")
        # what a pretraining run gets: live per-step metrics and the exported encoder (jobs/evaluate.py reads it)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert "encoder" in {a.path for a in client.list_artifacts(run.info.run_id)}
        # the row's switches as flat params, named the same in every child
        assert {"model.target", "views.different_views", "mask.type", "model.norm", "loss.type"} <= set(run.data.params)
        starts = int(run.data.tags["ablation.starts"])
        if key in done_before:
            assert starts == 1, run.data.tags  # finished before the kill: not trained again
        else:
            assert starts in (1, 2)  # not started yet, or interrupted and restarted
    assert kids["i/0"].data.params["loss.type"] == "unigrad" != kids["j/0"].data.params["loss.type"]

    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "ablation")}
    assert {
        "ablation/ablation_table.md",
        "ablation/ablation_table.csv",
        "ablation/ablation_paired.md",
        "ablation/ablation_paired.csv",
        "ablation/ablation_plot.png",
        "ablation/ablation_trials.csv",
    } <= arts
    table = (storage / name / "ablation_table.md").read_text()
    assert "| i | 2 |" in table and "| j | 1 (1 failed) |" in table and "83.7" in table  # paper FT beside
    (head,) = [line for line in table.splitlines() if line.startswith("| row |")]
    assert "| kNN (ours) | centroid (ours) |" in head
    (row_i,) = [line for line in table.splitlines() if line.startswith("| i |")]
    m, s = mean_std([kids[k].data.metrics["eval.centroid_top1"] for k in ("i/0", "i/1")])
    assert row_i.split(" | ")[3] == f"{m:.2f} ± {s:.2f}", row_i
    paired = (storage / name / "ablation_paired.md").read_text()
    assert "| i − j |" in paired and "| 1 |" in paired  # only seed 0 has both rows
    assert (storage / name / "ablation_plot.png").read_bytes()[:4] == b"\x89PNG"
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["ablation.trials_finished"] == 3 and metrics["ablation.trials_failed"] == 1
    # Tune's dashboards: one directory per trial with its results and TensorBoard event files
    trial_dirs = [p for p in (storage / name).iterdir() if p.is_dir() and p.name[:2] in ("i-", "j-")]
    assert {d.name.split("_")[0] for d in trial_dirs} == {"i-s0", "i-s1", "j-s0", "j-s1"}
    for trial in ("i-s0", "i-s1", "j-s0"):
        assert any(
            (d / "progress.csv").is_file() and list(d.glob("events.out.tfevents.*"))
            for d in trial_dirs
            if d.name.startswith(trial + "_")
        ), trial
    # Tune's stream is live: the training reports of steps 1 and 2 reached it before the trial's final result
    for d in trial_dirs:
        rows = (d / "progress.csv").read_text().splitlines() if (d / "progress.csv").is_file() else []
        if d.name.startswith("i-s0_") and len(rows) > 1:
            header = rows[0].split(",")
            steps = [r.split(",")[header.index("step")] for r in rows[1:]]
            assert steps[:2] == ["1", "2"], steps
