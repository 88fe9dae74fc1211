"""Resolving --checkpoint references: local paths, S3 URIs (moto server), errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.train

from siamim.orchestration.runs.refs import CheckpointNotFound, resolve_checkpoint
from siamim.orchestration.runs.storage import resolve_storage
from tests.helpers import free_port


def test_local_file_and_ray_directory(tmp_path):
    d = tmp_path / "checkpoint_00000003"
    d.mkdir()
    (d / "checkpoint.pt").write_bytes(b"x")
    got = resolve_checkpoint(str(d), tmp_path / "dl")
    assert got.path == d / "checkpoint.pt" and got.mlflow_run_id is None  # no Ray metadata yet
    ray.train.Checkpoint.from_directory(str(d)).set_metadata({"mlflow_run_id": "cd" * 16})
    assert resolve_checkpoint(str(d), tmp_path / "dl").mlflow_run_id == "cd" * 16  # the pretraining run to log into
    got = resolve_checkpoint(str(d / "checkpoint.pt"), tmp_path / "dl")
    assert got.path == d / "checkpoint.pt" and got.mlflow_run_id is None  # a bare file has no metadata
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="holds no checkpoint.pt"):
        resolve_checkpoint(str(tmp_path / "empty"), tmp_path / "dl")
    with pytest.raises(CheckpointNotFound, match="MLflow run id"):
        resolve_checkpoint("no/such/thing", tmp_path / "dl")


@pytest.fixture
def s3_endpoint(monkeypatch):
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError as err:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(
                    "moto_server did not start (is moto[server] installed? see pyproject test extras)"
                ) from err
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_s3_checkpoint_directory_and_file_are_downloaded(tmp_path, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    s3.create_bucket(Bucket="ckpts")
    s3.put_object(Bucket="ckpts", Key="runs/a/checkpoint_00000002/checkpoint.pt", Body=b"weights")
    query = f"?endpoint_override={s3_endpoint}&scheme=http"
    got = resolve_checkpoint(f"s3://ckpts/runs/a/checkpoint_00000002{query}", tmp_path / "d1")
    assert got.path.read_bytes() == b"weights" and got.mlflow_run_id is None
    storage = resolve_storage(f"s3://ckpts/runs/a/checkpoint_00000002{query}")
    ray.train.Checkpoint(storage.path, filesystem=storage.fs).set_metadata({"mlflow_run_id": "ef" * 16})
    got = resolve_checkpoint(f"s3://ckpts/runs/a/checkpoint_00000002{query}", tmp_path / "d1b")
    assert got.path.read_bytes() == b"weights" and got.mlflow_run_id == "ef" * 16
    got = resolve_checkpoint(f"s3://ckpts/runs/a/checkpoint_00000002/checkpoint.pt{query}", tmp_path / "d2")
    assert got.path.read_bytes() == b"weights"
    with pytest.raises(CheckpointNotFound, match="no checkpoint at"):
        resolve_checkpoint(f"s3://ckpts/runs/missing{query}", tmp_path / "d3")


def test_timm_export_folders_local_and_on_s3(tmp_path, s3_endpoint):
    import boto3

    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"tensors")
    assert resolve_checkpoint(str(folder), tmp_path / "dl").path == folder  # the folder itself, as timm wants it
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    s3.create_bucket(Bucket="encs")
    for name in ("config.json", "model.safetensors"):
        s3.put_object(Bucket="encs", Key=f"exports/run1/encoder/{name}", Body=(folder / name).read_bytes())
    query = f"?endpoint_override={s3_endpoint}&scheme=http"
    got = resolve_checkpoint(f"s3://encs/exports/run1/encoder{query}", tmp_path / "s3dl")
    assert got.path.is_dir() and sorted(p.name for p in got.path.iterdir()) == ["config.json", "model.safetensors"]
    assert (got.path / "model.safetensors").read_bytes() == b"tensors"
