"""The live metric stream's writer against a real MLflow store (sqlite) and a port where no server listens."""

from __future__ import annotations

import time

import pytest

from siamim.orchestration import tracking
from siamim.orchestration.runs import storage as st
from siamim.orchestration.tracking import stream as ms
from tests.helpers import free_port


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def rows(*steps: int) -> list[dict]:
    return [ms.record(s, {"loss": 10.0 - s, "lr": 0.1 * s}) for s in steps]


def points(*items) -> list[dict]:
    return [ms.record(step, {key: value}, once=True) for key, value, step in items]


def wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def test_rows_are_written_live_each_step_once_across_a_restart_and_a_resume(uri, tmp_path):
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    writer = ms.MetricWriter(uri, run_id, str(tmp_path), "r", deadline_s=5)
    writer.put(rows(1, 2, 3))
    wait_for(lambda: len(tracking.metric_history(uri, run_id, "loss")) == 3)  # without a close: live
    writer.put(rows(2, 3, 4))  # a worker group restarted from the step-1 checkpoint reports 2, 3 again
    writer.put(points(("restored_from_step", 1.0, 1)))
    assert writer.close() == 0
    resumed = ms.MetricWriter(uri, run_id, str(tmp_path), "r", deadline_s=5)  # --resume from step 3
    resumed.put(rows(4, 5))
    resumed.put(points(("restored_from_step", 1.0, 1), ("knn_top1", 50.0, 5)))  # a point is once per (key, step)
    assert resumed.close() == 0
    assert tracking.metric_history(uri, run_id, "loss") == [(s, 10.0 - s) for s in (1, 2, 3, 4, 5)]
    assert [s for s, _ in tracking.metric_history(uri, run_id, "lr")] == [1, 2, 3, 4, 5]
    assert tracking.metric_history(uri, run_id, "restored_from_step") == [(1, 1.0)]
    assert not st.exists(st.resolve_storage(str(tmp_path)), "r", ms.PENDING)


def test_unreachable_server_keeps_the_metrics_in_storage_until_a_resume_writes_them(uri, tmp_path, monkeypatch):
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    tracking.metric_history(uri, run_id, "loss")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: every write fails at once
    said: list[str] = []
    writer = ms.MetricWriter(down, run_id, str(tmp_path), "r", deadline_s=0.5, log=said.append)
    start = time.time()
    writer.put(rows(1, 2))
    writer.put(points(("knn_top1", 42.0, 2)))
    assert time.time() - start < 1.0  # the producer (Ray Train's controller) never waits for MLflow
    wait_for(lambda: any("unreachable for" in m for m in said))  # past the deadline: said once
    writer.put(rows(3))
    assert writer.close(timeout_s=1.0) == 2 * 3 + 1  # three rows of two values and one point left
    assert sum("unreachable for" in m for m in said) == 1
    assert "--resume r" in said[-1] and ms.PENDING in said[-1]

    storage = st.resolve_storage(str(tmp_path))
    assert ms.flush_pending(storage, "r", uri, log=said.append) == 2 * 3 + 1
    assert tracking.metric_history(uri, run_id, "loss") == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert tracking.metric_history(uri, run_id, "knn_top1") == [(2, 42.0)]
    assert not st.exists(storage, "r", ms.PENDING)
    assert ms.flush_pending(storage, "r", uri) == 0  # nothing left


def test_a_full_queue_waits_in_storage(uri, tmp_path, monkeypatch):
    monkeypatch.setattr(ms, "MAX_QUEUED", 3)
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    down = f"http://127.0.0.1:{free_port()}"
    writer = ms.MetricWriter(down, run_id, str(tmp_path), "r", deadline_s=60, log=lambda m: None)
    writer.put(rows(1, 2, 3, 4, 5))
    pending = st.read_json(st.resolve_storage(str(tmp_path)), "r", ms.PENDING)
    assert [r["step"] for r in pending["records"]] == [1, 2, 3, 4, 5] and pending["run_id"] == run_id
    writer.close(timeout_s=0.2)


def test_a_kept_end_is_written_by_the_resume_after_the_metrics_or_stays_kept(uri, tmp_path):
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    storage = st.resolve_storage(str(tmp_path))
    ms.spool(storage, "r", run_id, rows(1, 2))
    end = {"step": 2, "location": "somewhere"}
    ms.spool(storage, "r", run_id, [ms.record(2, {}, end=end)], append=True)
    ms.spool(storage, "r", run_id, [ms.record(2, {}, end=end)], append=True)  # a new end replaces the old one
    seen: list = []
    assert ms.flush_pending(storage, "r", uri, on_end=lambda rid, e: seen.append((rid, e)) and False) == 4
    assert seen == [(run_id, end)] and st.exists(storage, "r", ms.PENDING)  # not written: kept for the next resume
    assert ms.flush_pending(storage, "r", uri, on_end=lambda rid, e: seen.append(e) or True) == 0  # already there
    assert len(seen) == 2 and not st.exists(storage, "r", ms.PENDING)
    assert [s for s, _ in tracking.metric_history(uri, run_id, "loss")] == [1, 2]


def test_flush_returns_once_mlflow_holds_every_queued_row_or_keeps_them_in_storage(uri, tmp_path):
    """What a Tune trial's report waits for before Tune, which may stop the trial on it, sees the report."""
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    writer = ms.MetricWriter(uri, run_id, str(tmp_path), "r", deadline_s=5)
    writer.put(rows(1, 2, 3))
    writer.put(points(("knn_monitor", 60.0, 3)))
    assert writer.flush(timeout_s=20) is True
    assert [s for s, _ in tracking.metric_history(uri, run_id, "loss")] == [1, 2, 3]  # no wait: already there
    assert tracking.metric_history(uri, run_id, "knn_monitor") == [(3, 60.0)]
    writer.close()

    down = f"http://127.0.0.1:{free_port()}"
    stuck = ms.MetricWriter(down, run_id, str(tmp_path), "r", deadline_s=60, log=lambda m: None)
    stuck.put(rows(4, 5))
    wait_for(lambda: stuck.failing_since is not None)
    start = time.time()
    assert stuck.flush(timeout_s=20) is False
    assert time.time() - start < 2.0  # a failing server is not waited for
    pending = st.read_json(st.resolve_storage(str(tmp_path)), "r", ms.PENDING)
    assert [r["step"] for r in pending["records"]] == [4, 5]
    stuck.close(timeout_s=0.2)


def test_a_closed_writer_leaves_the_spool_to_the_driver(uri, tmp_path):
    """After close, the writer's thread no longer rewrites the spool: the run's end the driver appends stays."""
    run_id = tracking.open_run(uri, "exp", "r", {}, {})
    down = f"http://127.0.0.1:{free_port()}"
    writer = ms.MetricWriter(down, run_id, str(tmp_path), "r", deadline_s=60, log=lambda m: None)
    writer.put(rows(1, 2))
    assert writer.close(timeout_s=0.5) == 4
    storage = st.resolve_storage(str(tmp_path))
    ms.spool(storage, "r", run_id, [ms.record(2, {}, end={"step": 2})], append=True)
    writer.thread.join(timeout=5)
    assert not writer.thread.is_alive()
    assert [("end" in r, r["step"]) for r in st.read_json(storage, "r", ms.PENDING)["records"]] == [
        (False, 1),
        (False, 2),
        (True, 2),
    ]
