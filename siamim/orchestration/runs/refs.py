"""Where a ``--checkpoint`` reference points (``jobs/evaluate.py``, the ablation's evaluation task).

A reference is a local checkpoint file (ours, or an official SiameseIM / MAE ``.pth``), a Ray checkpoint
directory or a timm export folder; a storage URI (``s3://bucket/prefix/checkpoint_000100``, pyarrow's query
parameters allowed); an MLflow run id or ``runs:/<run id>[/<artifact path>]`` (the run's ``encoder/``, or an older
release's ``checkpoint/checkpoint.pt``); or ``models:/<name>/<version|latest>`` / ``models:/<name>@<alias>``.
The resolved ``path`` is a checkpoint file or a timm export folder (:func:`siamim.foreign.read_checkpoint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from siamim.checkpoint import CHECKPOINT_FILE
from siamim.errors import UserError
from siamim.orchestration.runs.checkpoints import directory_run_id
from siamim.orchestration.runs.storage import StorageError, resolve_storage
from siamim.orchestration.tracking import resolve_tracking_uri
from siamim.timm_export import TIMM_CONFIG, TIMM_WEIGHTS, is_timm_export

RUN_ID = re.compile(r"^[0-9a-f]{32}$")

ARTIFACT_CANDIDATES = ("encoder", "checkpoint/checkpoint.pt", "checkpoints/checkpoint.pt", "checkpoint.pt")


class CheckpointNotFound(UserError, FileNotFoundError):
    """The ``--checkpoint`` reference does not lead to a checkpoint file; the message says what was tried."""


@dataclass
class ResolvedCheckpoint:
    path: Path  # local checkpoint file, or a timm export folder
    mlflow_run_id: str | None  # the run the reference named, or the run in a Ray checkpoint directory's metadata
    reference: str


def _from_mlflow(run_id: str, artifact: str | None, tracking_uri: str, dest: Path) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except Exception as err:
        raise CheckpointNotFound(
            f"MLflow run {run_id} is not in tracking store {tracking_uri} ({err}); "
            "pass --tracking-uri of the store the pretraining logged to"
        ) from err
    candidates = [artifact] if artifact else list(ARTIFACT_CANDIDATES)
    for cand in candidates:
        try:
            local = Path(
                download_artifacts(run_id=run_id, artifact_path=cand, dst_path=str(dest), tracking_uri=tracking_uri)
            )
        except Exception:
            continue
        if is_timm_export(local):
            return local
        local = local / CHECKPOINT_FILE if local.is_dir() else local
        if local.is_file():
            return local
    raise CheckpointNotFound(
        f"MLflow run {run_id} has no checkpoint artifact (tried {', '.join(candidates)}); "
        "was the pretraining run finished with a checkpoint?"
    )


def _from_storage(uri: str, dest: Path) -> tuple[Path, str | None]:
    """The checkpoint file at ``uri`` downloaded into ``dest``, and the run id of its Ray directory (if any)."""
    try:
        storage = resolve_storage(uri, what="--checkpoint")
    except StorageError as err:
        raise CheckpointNotFound(str(err)) from err
    fs, path = storage.fs, storage.path
    info = fs.get_file_info(path)
    run_id = None
    if info.type == pafs.FileType.Directory:
        run_id = directory_run_id(fs, path)
        export = [path.rstrip("/") + "/" + name for name in (TIMM_CONFIG, TIMM_WEIGHTS)]
        if all(fs.get_file_info(p).type == pafs.FileType.File for p in export):  # a timm export folder
            folder = dest / "encoder"
            folder.mkdir(parents=True, exist_ok=True)
            for p in export:
                _copy(fs, p, folder / p.rsplit("/", 1)[-1])
            return folder, run_id
        path = path.rstrip("/") + "/" + CHECKPOINT_FILE
        info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise CheckpointNotFound(
            f"no checkpoint at {uri} (looked for {path}); give a checkpoint file or a "
            f"directory holding {CHECKPOINT_FILE}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    local = dest / CHECKPOINT_FILE
    _copy(fs, path, local)
    return local, run_id


def _copy(fs, path: str, local: Path) -> None:
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        while chunk := src.read(1 << 24):
            out.write(chunk)


def resolve_checkpoint(ref: str, dest: str | Path, tracking_uri: str | None = None) -> ResolvedCheckpoint:
    """Turn a ``--checkpoint`` reference into a local ``checkpoint.pt`` (downloading into ``dest``)."""
    dest = Path(dest)
    text = str(ref).strip()
    local = Path(text).expanduser()
    if "://" not in text and local.exists():
        path = local / CHECKPOINT_FILE if local.is_dir() and not is_timm_export(local) else local
        if not path.exists():
            raise CheckpointNotFound(
                f"directory {local} holds no {CHECKPOINT_FILE} (nor {TIMM_CONFIG} + {TIMM_WEIGHTS})"
            )
        run_id = directory_run_id(pafs.LocalFileSystem(), str(local.resolve())) if local.is_dir() else None
        return ResolvedCheckpoint(path, run_id, text)
    if text.startswith("models:/"):
        from siamim.orchestration.tracking.registry import RegistryError, resolve_model_uri

        uri = resolve_tracking_uri(tracking_uri)
        try:
            run_id, artifact, _ = resolve_model_uri(text, uri)
        except RegistryError as err:
            raise CheckpointNotFound(str(err)) from err
        return ResolvedCheckpoint(_from_mlflow(run_id, artifact, uri, dest), run_id, text)
    if text.startswith("runs:/"):
        run_id, _, artifact = text[len("runs:/") :].partition("/")
        uri = resolve_tracking_uri(tracking_uri)
        return ResolvedCheckpoint(_from_mlflow(run_id, artifact or None, uri, dest), run_id, text)
    if RUN_ID.match(text):
        uri = resolve_tracking_uri(tracking_uri)
        return ResolvedCheckpoint(_from_mlflow(text, None, uri, dest), text, text)
    if "://" in text and not text.startswith("file://"):
        return ResolvedCheckpoint(*_from_storage(text, dest), text)
    raise CheckpointNotFound(
        f"checkpoint {text!r} is not an existing file or directory, a storage URI "
        "(s3://bucket/path), an MLflow run id (32 hex digits), runs:/<run id>/<path> or models:/<name>/<version>"
    )
