"""A submitted job's locations: refused inside Ray's copy of the working directory, accepted elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from siamim.orchestration.driver.submitted import TemporaryLocationError, check_lasting, check_tracking_lasting
from tests.jobs.helpers import REPO

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray 2.60 sets for a submitted driver (checked on a real head)


@pytest.fixture
def submitted(tmp_path, monkeypatch):
    """This process as a submitted job's driver running in Ray's copy of its working_dir (``tmp_path/_ray_pkg``)."""
    copy = tmp_path / "_ray_pkg_0123"
    copy.mkdir()
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {"job_submission_id": "s1"}}
    monkeypatch.setenv(JOB_ENV, json.dumps(job))
    return copy


def test_relative_and_default_locations_in_the_copy_are_refused(submitted):
    with pytest.raises(TemporaryLocationError, match=r"--storage runs/ray \(the default\) is .*_ray_pkg_0123/runs/ray"):
        check_lasting("runs/ray", "--storage runs/ray (the default)")
    with pytest.raises(TemporaryLocationError, match=r"s3:// URI"):
        check_lasting(str(submitted / "abs"), "--storage x")  # absolute, but still inside the copy
    with pytest.raises(TemporaryLocationError, match=r"no --tracking-uri, no MLFLOW_TRACKING_URI.*MLFLOW_TRACKING_URI"):
        check_tracking_lasting(None)
    with pytest.raises(TemporaryLocationError, match=r"--tracking-uri sqlite:///m.db is "):
        check_tracking_lasting("sqlite:///m.db")


def test_lasting_locations_pass(submitted, tmp_path, monkeypatch):
    check_lasting(str(tmp_path / "shared" / "runs"), "--storage")
    check_lasting("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http", "--storage")
    check_tracking_lasting("http://127.0.0.1:5000")
    check_tracking_lasting(f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # the dev stack's, via the runtime env
    check_tracking_lasting(None)


def test_outside_ray_job_submit_nothing_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(JOB_ENV, raising=False)
    check_lasting("runs/ray", "--storage")
    check_tracking_lasting(None)
    # a job submitted without --working-dir runs in the head's own directory, not a copy
    monkeypatch.setenv(JOB_ENV, json.dumps({"runtime_env": {}, "metadata": {}}))
    check_lasting("runs/ray", "--storage")


@pytest.mark.parametrize(
    "job,args",
    [
        ("pretrain.py", []),
        ("ablate.py", ["--rows", "i"]),
        ("evaluate.py", ["--baseline", "pixels"]),
        ("prepare_data.py", ["--source", "fashion_mnist", "--out", "data/fmnist"]),
    ],
)
def test_every_writing_job_exits_2_before_torch(job, args, submitted):
    """Each job refuses a location in the copy with exit 2 and one line, without importing torch (seconds)."""
    code = (
        "import runpy, sys; sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    print('rc', e.code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "jobs" / job), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.strip().splitlines()[-1] == "rc 2 False", proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Ray's temporary copy" in line]
    assert len(errors) == 1 and ("--storage" in errors[0] or "--out" in errors[0]), proc.stderr
