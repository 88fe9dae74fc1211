"""The Ray checkpoints of a run in storage: list them, verify them, pick the one to resume from.

Every ``checkpoint_<step>/checkpoint.pt`` carries an integrity record
(``checkpoint.pt.integrity.json``: size, sha256, step, plan; see
:mod:`siamim.checkpoint`). :func:`resume_point` checks the checkpoints newest
first, in the driver, before any worker starts, and returns the newest intact one
together with the damaged ones it skipped, so a truncated upload costs a message
and a fallback instead of a worker-group start and a crash.

Beside ``checkpoint.pt``, Ray keeps the checkpoint's metadata
(``ray.train.Checkpoint.set_metadata``): the MLflow run id the checkpoint
belongs to (:func:`checkpoint_run_id`).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from siamim.checkpoint import CHECKPOINT_FILE, INTEGRITY_SUFFIX, CheckpointError, check_integrity, digest_stream
from siamim.orchestration.runs.storage import Storage

DIR_PATTERN = re.compile(r"^checkpoint_(\d+)(?:_.*)?$")


@dataclass
class StoredCheckpoint:
    name: str  # directory name, e.g. checkpoint_00000004
    step: int
    path: str  # directory path inside storage.fs
    record: dict | None = None  # the integrity record (None: a checkpoint written before records existed)


@dataclass
class ResumePoint:
    checkpoint: StoredCheckpoint | None  # the newest intact checkpoint (None: the run has none yet)
    skipped: list[tuple[StoredCheckpoint, str]] = field(default_factory=list)  # newer damaged ones, with why

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0


def list_checkpoints(storage: Storage, run_name: str) -> list[StoredCheckpoint]:
    """The run's checkpoint directories, newest (highest step) first."""
    root = storage.join(run_name)
    try:
        infos = storage.fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except OSError:
        return []
    found = []
    for info in infos:
        m = DIR_PATTERN.match(info.base_name)
        if info.type == pafs.FileType.Directory and m:
            found.append(StoredCheckpoint(info.base_name, int(m.group(1)), info.path))
    return sorted(found, key=lambda c: (c.step, c.name), reverse=True)


def verify(storage: Storage, ckpt: StoredCheckpoint) -> None:
    """Check ``ckpt`` against its integrity record (fills ``ckpt.record``); raises :class:`CheckpointError`."""
    fs = storage.fs
    data = posixpath.join(ckpt.path, CHECKPOINT_FILE)
    where = storage.display_path(data)
    info = fs.get_file_info(data)
    if info.type == pafs.FileType.NotFound:
        raise CheckpointError(f"checkpoint {where} is missing (an interrupted save or upload)")
    rec_info = fs.get_file_info(data + INTEGRITY_SUFFIX)
    if rec_info.type == pafs.FileType.NotFound:
        if info.size == 0:
            raise CheckpointError(f"checkpoint {where} is empty (0 bytes)")
        ckpt.record = None  # older checkpoint: not verifiable, the worker's torch.load will tell
        return
    try:
        with fs.open_input_stream(data + INTEGRITY_SUFFIX) as f:
            record = json.loads(f.read().decode())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"integrity record of {where} is unreadable ({err})") from err
    with fs.open_input_stream(data) as f:
        size, sha = digest_stream(f.read)
    check_integrity(where, record, size, sha)
    ckpt.record = record


def resume_point(storage: Storage, run_name: str) -> ResumePoint:
    """The newest intact checkpoint of ``run_name`` and the damaged newer ones skipped on the way."""
    point = ResumePoint(None)
    for ckpt in list_checkpoints(storage, run_name):
        try:
            verify(storage, ckpt)
        except (CheckpointError, OSError) as err:
            point.skipped.append((ckpt, str(err)))
            continue
        point.checkpoint = ckpt
        break
    return point


def checkpoint_run_id(storage: Storage, ckpt: StoredCheckpoint) -> str | None:
    """The MLflow run id in ``ckpt``'s Ray metadata; None for checkpoints written before it was kept there."""
    return directory_run_id(storage.fs, ckpt.path)


def directory_run_id(fs: pafs.FileSystem, directory: str) -> str | None:
    """The MLflow run id in the Ray metadata of checkpoint directory ``directory`` on ``fs`` (None: none there).

    For any reference to a Ray checkpoint directory (``jobs/evaluate.py --checkpoint <dir or URI>``);
    checkpoints written before the metadata carried it have ``mlflow_run_id`` inside ``checkpoint.pt``.
    """
    import ray.train

    try:
        metadata = ray.train.Checkpoint(directory, filesystem=fs).get_metadata()
    except (OSError, ValueError):
        return None
    return metadata.get("mlflow_run_id")


def checkpoint_location(storage: Storage, checkpoint) -> str | None:
    """Where a Ray ``Checkpoint`` of a run under ``storage`` lies: a path, or a ``<scheme>://`` URI with the
    storage's query (the endpoint of an S3-compatible server), so it can be pasted into ``--checkpoint``."""
    if checkpoint is None:
        return None
    return storage.locate(checkpoint.path)
