"""MLflow tracking glue against a real local MLflow store (sqlite)."""

from __future__ import annotations

import pytest

from siamim.orchestration import tracking
from tests.helpers import free_port


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(base=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:///rel/m.db", base=tmp_path) == f"sqlite:///{tmp_path}/rel/m.db"
    assert tracking.resolve_tracking_uri("mlruns", base=tmp_path) == f"file://{tmp_path}/mlruns"
    assert tracking.resolve_tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.resolve_tracking_uri(base=tmp_path) == "http://server:5000"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_check_tracking_unreachable_server_and_unwritable_store(tmp_path):
    port = free_port()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.check_tracking(f"http://127.0.0.1:{port}", timeout_s=2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(tracking.TrackingError, match="not writable"):
        tracking.check_tracking(f"sqlite:///{blocker}/sub/mlflow.db")
    tracking.check_tracking(f"sqlite:///{tmp_path}/ok/mlflow.db")


def test_open_run_logs_params_tags_and_reopens_without_duplicates(uri):
    from mlflow.tracking import MlflowClient

    run_id = tracking.open_run(uri, "exp", "r1", {"a.b": 1, "a.c": (0.9, 0.95), "a.d": None}, {"t": "v", "n": None})
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"a.b": "1", "a.c": "[0.9, 0.95]", "a.d": "None"}
    assert run.data.tags["t"] == "v" and "n" not in run.data.tags and run.info.run_name == "r1"
    tracking.finish_run(uri, run_id, "FAILED")

    again = tracking.open_run(uri, "exp", "r1", {"a.b": 2, "a.c": (0.9, 0.95), "a.d": None, "e": 5}, {}, run_id=run_id)
    assert again == run_id
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params["a.b"] == "1" and run.data.params["e"] == "5"
    assert run.data.tags["resume.override.a.b"] == "2" and run.data.tags["resume.count"] == "1"
    assert len(MlflowClient(uri).search_runs([run.info.experiment_id])) == 1
    with pytest.raises(tracking.TrackingError, match="not in tracking store"):
        tracking.open_run(uri, "exp", "r1", {}, {}, run_id="0" * 32)


def test_git_commit_sources_and_source_digest(tmp_path, monkeypatch):
    monkeypatch.delenv("SIAMIM_GIT_COMMIT", raising=False)
    commit = tracking.git_commit()
    assert commit is None or len(commit) == 40
    assert tracking.git_commit(tmp_path) is None  # not a checkout (e.g. a submitted job's working dir)
    assert tracking.git_commit(tmp_path, {"git_commit": "abc"}) == "abc"  # ray job submit --metadata-json
    monkeypatch.setenv("SIAMIM_GIT_COMMIT", "def")
    assert tracking.git_commit(tmp_path, {"git_commit": "abc"}) == "def"

    (tmp_path / "siamim").mkdir()
    (tmp_path / "siamim" / "a.py").write_text("x = 1\n")
    first = tracking.source_digest(tmp_path)
    assert len(first) == 64 and tracking.source_digest(tmp_path) == first
    (tmp_path / "siamim" / "a.py").write_text("x = 2\n")
    assert tracking.source_digest(tmp_path) != first


def test_resumed_run_shows_the_configuration_it_finished_with(uri):
    """Params are immutable: the run description lists every key whose value changed on resume, old and new."""
    from mlflow.tracking import MlflowClient

    run_id = tracking.open_run(uri, "exp", "r", {"train.epochs": 1.0, "train.max_steps": 4, "model.depth": 2}, {})
    tracking.open_run(
        uri, "exp", "r", {"train.epochs": 2.0, "train.max_steps": None, "model.depth": 2}, {}, run_id=run_id
    )
    tags = MlflowClient(uri).get_run(run_id).data.tags
    note = tags["mlflow.note.content"]
    assert "| train.epochs | 2.0 | 1.0 |" in note and "| train.max_steps | None | 4 |" in note
    assert "model.depth" not in note and "started" in note
    # a second resume that changes nothing more still says what the run runs with (vs. the start params)
    tracking.open_run(
        uri, "exp", "r", {"train.epochs": 2.0, "train.max_steps": None, "model.depth": 2}, {}, run_id=run_id
    )
    assert "| train.epochs | 2.0 | 1.0 |" in MlflowClient(uri).get_run(run_id).data.tags["mlflow.note.content"]
