"""Whole-file writes to a pyarrow filesystem (local disk or an object store) that never leave half a file.

Light on purpose (pyarrow only): the dataset shards (``siamim.data.parquet``) and the platform's run
records (``siamim.orchestration.runs.storage``) write through it.
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def write_bytes(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path``: one PUT on object stores; temp file + rename on local disk."""
    local = isinstance(fs, pafs.LocalFileSystem)
    fs.create_dir(str(Path(path).parent) if local else posixpath.dirname(path), recursive=True)
    if local:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(payload)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(payload)
