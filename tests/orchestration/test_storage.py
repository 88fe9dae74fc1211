"""Storage roots: local paths, object-store URIs, writability, run records."""

from __future__ import annotations

import pytest

from siamim.orchestration import storage as st


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
