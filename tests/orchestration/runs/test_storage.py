"""Storage roots: local paths, object-store URIs, writability, run records."""

from __future__ import annotations

import pytest

from siamim.orchestration.runs import storage as st


def test_relative_local_path_becomes_absolute(tmp_path):
    s = st.resolve_storage("runs/ray", base=tmp_path)
    assert s.is_local and s.path == str(tmp_path / "runs" / "ray")
    assert s.ray_kwargs() == {"storage_path": str(tmp_path / "runs" / "ray")}
    assert st.resolve_storage(f"file://{tmp_path}").path == str(tmp_path)


def test_s3_uri_with_endpoint_becomes_filesystem_and_bucket_path():
    import pyarrow.fs as pafs

    s = st.resolve_storage("s3://bucket/some/prefix?endpoint_override=127.0.0.1:9000&scheme=http")
    assert not s.is_local and s.path == "bucket/some/prefix"
    assert isinstance(s.filesystem, pafs.S3FileSystem)
    assert s.display("run1") == "s3://bucket/some/prefix/run1"
    assert set(s.ray_kwargs()) == {"storage_path", "storage_filesystem"}


def test_bad_uri_is_a_clear_error():
    with pytest.raises(st.StorageError, match="not a storage URI"):
        st.resolve_storage("nosuchscheme://x/y")
    with pytest.raises(st.StorageError, match="empty"):
        st.resolve_storage("  ")


def test_check_writable(tmp_path):
    st.check_writable(st.resolve_storage(str(tmp_path / "new" / "dir")))
    assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(st.StorageError, match="is not writable"):
        st.check_writable(st.resolve_storage(str(blocker / "sub")))


def test_run_records_round_trip_and_list_in_creation_order(tmp_path):
    s = st.resolve_storage(str(tmp_path))
    st.write_json(s, {"name": "b", "created": 2.0}, "b", st.RUN_RECORD)
    st.write_json(s, {"name": "a", "created": 1.0}, "a", st.RUN_RECORD)
    (tmp_path / "not-a-run").mkdir()
    assert st.read_json(s, "a", st.RUN_RECORD) == {"name": "a", "created": 1.0}
    assert st.exists(s, "b", st.RUN_RECORD) and not st.exists(s, "c", st.RUN_RECORD)
    assert [r["name"] for r in st.list_runs(s)] == ["a", "b"]
    assert st.list_runs(st.resolve_storage(str(tmp_path / "missing"))) == []


def test_a_location_pastes_back_with_its_endpoint():
    """The summary's / tag's checkpoint location keeps the S3-compatible endpoint, so it works as --checkpoint."""
    storage = st.resolve_storage("s3://bucket/runs?endpoint_override=127.0.0.1:9999&scheme=http")
    loc = storage.locate("bucket/runs/r/checkpoint_000002")
    assert loc == "s3://bucket/runs/r/checkpoint_000002?endpoint_override=127.0.0.1:9999&scheme=http"
    again = st.resolve_storage(loc)
    assert again.path == "bucket/runs/r/checkpoint_000002" and again.fs.type_name == "s3"
    assert st.resolve_storage("/tmp/x").locate("/tmp/x/r") == "/tmp/x/r"


def test_an_unreachable_endpoint_names_the_flag_it_came_from():
    err = OSError("When resolving region for bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket operation")
    for what, flag in (("run.storage", "--storage"), ("--checkpoint", "--checkpoint")):
        msg = st.unreachable_endpoint_message("s3://b/x", err, what)
        assert msg.startswith(f"{what}='s3://b/x'") and f"{flag} 's3://b/x?endpoint_override=" in msg
    assert "--storage" not in st.unreachable_endpoint_message("s3://b/x", err, "--checkpoint")
