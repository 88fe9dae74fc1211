"""The search end to end: real Ray head (2 CPUs), real Ray Tune (ASHA) + Ray Train, real MLflow store.

A 4-trial search (the blr grid below x 1 draw of crop_min) whose driver is killed (SIGKILL) once a trial has
finished, then continued with ``--resume``. blr 1e8 makes the loss non-finite at step 2, which the loop
raises at that step's flush, before the monitor's first value there: that trial fails (with blr 1e4 the loss
is still finite at step 2, its kNN is at chance, and ASHA may stop it before step 4's NaN is seen).
blr 1.0 collapses the features (kNN ~10-25 % against ~40 %): ASHA stops it at a rung, after fewer steps than
the budget, against the two sane trials that reached the rung first (two at a time: the
collapsing one starts when a sane one has finished; ASHA's rungs are restored after the kill). The best
preset is written to configs/found/<name>.yaml, loads with ``--config found/<name>`` and trains.

Tiny budget: the SMALL model of tests/conftest.py, 8 steps, the monitor every 2 steps on 200 / 100 images.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from siamim.config import CONFIG_DIR
from tests.conftest import SMALL
from tests.jobs.helpers import REPO

pytestmark = pytest.mark.slow

SEARCH = REPO / "jobs" / "search.py"
BUDGET = 8
SPACE = """optim.blr: {grid: [2.0e-3, 1.0e-3, 1.0, 1.0e8]}
views.crop_min: {uniform: [0.2, 0.3]}
"""
TINY = [o for o in SMALL if not o.startswith(("train.checkpoint_every", "train.log_every"))] + [
    "train.checkpoint_every=2",
    "data.train_subset=256",
    "eval.monitor_bank=200",
    "eval.monitor_queries=100",
    "eval.batch_size=256",
]
FLAGS = [
    "--num-samples",
    "1",
    "--steps",
    str(BUDGET),
    "--grace-period",
    "2",
    "--reduction-factor",
    "2",
    "--max-concurrent",
    "2",
]


def search_cmd(ray_head, storage, db, *args) -> list[str]:
    return [sys.executable, str(SEARCH), "--address", ray_head["gcs"], "--storage", str(storage)] + [
        "--tracking-uri",
        f"sqlite:///{db}",
        *args,
    ]


def children(db, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("siamim-search")
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`search.name` = '{name}'")
    return {r.data.tags["search.trial"]: r for r in runs if "search.trial" in r.data.tags}


@pytest.fixture
def found_name():
    """A unique search name; its preset under configs/found/ is removed afterwards."""
    name = f"pytest-search-{uuid.uuid4().hex[:8]}"
    yield name
    (CONFIG_DIR / "found" / f"{name}.yaml").unlink(missing_ok=True)


def test_asha_search_killed_resumed_writes_the_best_preset(
    ray_head, base_env, fashion_mnist_available, tmp_path, found_name
):
    from mlflow.tracking import MlflowClient

    storage, db, name = tmp_path / "search", tmp_path / "mlflow.db", found_name
    (tmp_path / "space.yaml").write_text(SPACE)
    cmd = search_cmd(ray_head, storage, db, "--space", str(tmp_path / "space.yaml"), "--name", name, *FLAGS, *TINY)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=base_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    done = lambda: {k for k, r in children(db, name).items() if r.info.status == "FINISHED"}  # noqa: E731
    while time.time() < deadline and first.poll() is None and not done():
        time.sleep(1.0)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]  # still mid-search
    done_before = done()
    assert done_before, (tmp_path / "first.log").read_text()[-4000:]
    os.kill(first.pid, signal.SIGKILL)  # the driver dies; Ray stops its trials
    first.wait(30)

    with (tmp_path / "resume.log").open("w") as log:
        proc = subprocess.Popen(
            search_cmd(ray_head, storage, db, "--resume", name),
            cwd=tmp_path,
            env=base_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            rc = proc.wait(420)
        finally:
            proc.kill()
    out = (tmp_path / "resume.log").read_text()
    assert rc == 0, out[-6000:]
    assert f"resuming search '{name}': 4 trials" in out, out[-6000:]

    kids = children(db, name)
    assert set(kids) == {f"{name}/{i}" for i in range(4)}, kids  # one child run per trial, no duplicates
    by_blr = {float(r.data.params["search.sample.optim.blr"]): r for r in kids.values()}
    for key in done_before:  # finished before the kill: not trained again
        assert kids[key].data.tags["search.starts"] == "1", kids[key].data.tags

    diverged = by_blr[1.0e8]
    assert diverged.info.status == "FAILED" and "non-finite loss" in diverged.data.tags["search.error"]
    collapsed = by_blr[1.0]
    assert collapsed.info.status == "KILLED" and collapsed.data.tags["siamim.stopped_early"] == "true"
    assert int(collapsed.data.tags["search.steps_run"]) < BUDGET  # ASHA stopped it before the budget
    sane = [by_blr[2.0e-3], by_blr[1.0e-3]]
    for run in sane:  # the first two at each rung: nothing to compare against yet, or the better one
        assert run.data.tags["search.steps_run"] == str(BUDGET) or run.data.tags["siamim.stopped_early"] == "true"
    finished = [r for r in kids.values() if r.info.status == "FINISHED"]
    assert finished and all(r.data.tags["siamim.stopped_early"] == "false" for r in finished)
    assert all(r.data.params["eval.monitor_every"] == "2" for r in kids.values())  # set by the search
    client = MlflowClient(f"sqlite:///{db}")
    for run in finished:  # the monitor reached MLflow live, every 2 steps
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "knn_monitor")]
        assert steps == [2, 4, 6, 8], steps
    for run in kids.values():  # a trial ASHA stopped keeps every step it ran, up to the report it was stopped on
        if run.data.tags["siamim.stopped_early"] == "true":
            ran = int(run.data.tags["search.steps_run"])
            assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, ran + 1))
            assert max(m.step for m in client.get_metric_history(run.info.run_id, "knn_monitor")) == ran
    crop = {r.data.params["search.sample.views.crop_min"] for r in kids.values()}
    assert len(crop) == 1 and 0.2 <= float(crop.pop()) <= 0.3  # one draw, crossed with the grid

    # the table: each trial's sampled values, last metric, steps and status
    rows = list(csv.DictReader((storage / name / "search_table.csv").open()))
    status = {float(r["optim.blr"]): r for r in rows}
    assert status[1.0e8]["status"] == "failed" and status[1.0]["status"] == "stopped early"
    assert int(status[1.0]["steps"]) < BUDGET and status[1.0]["stopped_early"] == "True"
    assert (storage / name / "search_plot.png").read_bytes()[:4] == b"\x89PNG"
    finished = [r for r in rows if r["status"] == "finished"]
    top = max(float(r["knn_monitor_last"]) for r in finished)
    tied = [r for r in finished if float(r["knn_monitor_last"]) == top]  # kNN on a small subset ties often
    best_blr = min(tied, key=lambda r: r["trial"])  # a tie goes to the first trial drawn
    assert "**best**" in (storage / name / "search_table.md").read_text()
    parent = client.get_run(kids[f"{name}/0"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["search.trials_failed"] == 1
    assert parent.data.metrics["search.trials_stopped_early"] >= 1
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {
        "search/search_table.md",
        "search/search_table.csv",
        "search/search_plot.png",
        f"search/{name}.yaml",
    } <= arts

    # the best trial's config as a preset: header, sampled values, loads by name and trains
    preset = CONFIG_DIR / "found" / f"{name}.yaml"
    text = preset.read_text()
    assert text.startswith(f"# found by: jobs/search.py --name {name}") and "# budget: 8 steps per trial" in text
    assert "knn_monitor = " in text and "# date: " in text
    from siamim.config import load_config
    from siamim.train.loop import pretrain

    # what --config found/<name> resolves (jobs/pretrain.py and the other jobs call load_config with it)
    cfg = load_config(f"found/{name}", [f"train.output_dir={tmp_path}/again", "train.max_steps=2"])
    assert cfg.optim.blr == float(best_blr["optim.blr"]) and cfg.data.train_subset == 256
    assert pretrain(cfg, device="cpu", verbose=False)["step"] == 2
