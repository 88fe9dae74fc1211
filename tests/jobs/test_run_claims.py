"""Issue 19 item 1: a second live launch of a run name is refused before it writes anything (local and S3)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from siamim.orchestration.runs import claims
from siamim.orchestration.runs import storage as st
from tests.jobs.helpers import PRETRAIN, TINY_ARGS
from tests.jobs.test_pretrain_cli import _mlflow_runs, load_cli, run_cli
from tests.orchestration.runs.test_claims import hold, race_for_claim

TINY_ONE_WORKER = [o for o in TINY_ARGS if not o.startswith("run.num_workers")] + ["run.num_workers=1"]


def test_a_second_pretrain_of_a_live_run_name_is_refused_and_writes_nothing(base_env, tmp_path):
    """Two jobs/pretrain.py --name twin at once: the second exits 2 naming the first and --resume; one MLflow
    run, one run record; the first, stopped, gives the name back."""
    db, runs = f"{tmp_path}/m.db", tmp_path / "runs"
    common = ["--storage", str(runs), "--tracking-uri", f"sqlite:///{db}", "--name", "twin"]
    first = subprocess.Popen(
        [sys.executable, str(PRETRAIN), *common, *TINY_ONE_WORKER, "train.epochs=1000"],
        cwd=tmp_path,
        env={**base_env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in first.stdout:  # the run record and the MLflow run exist once it says so
            lines.append(line)
            if "starting run 'twin'" in line:
                break
        assert lines and "starting run 'twin'" in lines[-1], "".join(lines)[-3000:]
        record = st.read_json(st.resolve_storage(str(runs)), "twin", st.RUN_RECORD)

        rc, out, elapsed = run_cli([*common, *TINY_ONE_WORKER], base_env, tmp_path)
        assert rc == 2, out[-3000:]
        assert f"run 'twin' is already being trained by pid {first.pid}" in out, out
        assert "--resume twin" in out and "Traceback" not in out
        assert "Ray instance" not in out and elapsed < 60
        (run,) = _mlflow_runs(db)  # the second opened no MLflow run and left the record alone
        assert run.info.run_id == record["mlflow_run_id"]
        assert st.read_json(st.resolve_storage(str(runs)), "twin", st.RUN_RECORD) == record
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=120)
    assert "[siamim] terminated" in rest, ("".join(lines) + rest)[-3000:]  # (its exit code: test_pretrain_cli)
    assert not (runs / "twin" / claims.CLAIM).exists()  # given back: --resume twin may now take it


@pytest.fixture
def s3_storage(s3_server):
    return f"s3://siamim-test/claims-{time.time_ns()}?endpoint_override={s3_server}&scheme=http"


def test_a_live_claim_on_s3_refuses_a_second_pretrain(base_env, s3_storage, tmp_path, capsys):
    proc = hold(s3_storage, "twin")
    try:
        rc = load_cli().main(
            ["--storage", s3_storage, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--name", "twin", *TINY_ARGS]
        )
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"is already being trained by pid {proc.pid}" in err and "--resume twin" in err, err
        storage = st.resolve_storage(s3_storage)
        assert not st.exists(storage, "twin", st.RUN_RECORD)
        assert claims.read_claim(storage, "twin")["pid"] == proc.pid
        assert not _mlflow_runs(f"{tmp_path}/m.db")
    finally:
        proc.kill()
        proc.wait()


def test_concurrent_takers_on_s3_one_wins(base_env, s3_storage):
    """S3's conditional PUT (If-None-Match: *) lets exactly one taker create the claim."""
    storage = st.resolve_storage(s3_storage)
    won, refused = race_for_claim(storage, "r1", 6)
    assert len(won) == 1 and refused == 5
    won[0].release()
    assert claims.read_claim(storage, "r1") is None


def test_concurrent_takers_of_a_stale_claim_on_s3_one_wins(base_env, s3_storage):
    """A gone owner's claim is replaced only while it is still that owner's (PUT If-Match: <etag>)."""
    storage = st.resolve_storage(s3_storage)
    stale = {"token": "theirs", "host": "another-host", "pid": 4242, "created": 1.0, "heartbeat": 1.0}
    st.write_json(storage, stale, "r1", claims.CLAIM)
    won, refused = race_for_claim(storage, "r1", 6)
    assert len(won) == 1 and refused == 5
    assert claims.read_claim(storage, "r1")["token"] == won[0].record["token"]
    won[0].release()
