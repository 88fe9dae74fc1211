"""Locations of runs (``run.storage``), checkpoints and artifacts: a local directory or an object-store URI.

A URI's query (``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``) configures its
:class:`pyarrow.fs.FileSystem` (``FileSystem.from_uri``); Ray gets ``storage_path`` + ``storage_filesystem``.
Local paths go through :func:`local_path`, the one rule for local locations. Layout::

    <storage>/<run name>/checkpoint_<step>/checkpoint.pt   Ray Train checkpoints (last K kept)
    <storage>/<run name>/siamim_run.json                   run record: MLflow run id, config
    <storage>/<run name>/checkpoint_manager_snapshot.json  Ray Train's own bookkeeping
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from siamim.data.fs import write_bytes
from siamim.errors import UserError

RUN_RECORD = "siamim_run.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


class StorageError(UserError, RuntimeError):
    """The storage location cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Storage:
    """A resolved location: ``uri`` as given (absolute for local paths), ``path`` inside ``filesystem``
    (``bucket/prefix`` for S3), ``filesystem`` None for local paths (Ray's default)."""

    uri: str
    path: str
    filesystem: pafs.FileSystem | None

    @property
    def is_local(self) -> bool:
        return self.filesystem is None

    @property
    def fs(self) -> pafs.FileSystem:
        return self.filesystem or pafs.LocalFileSystem()

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def locate(self, path: str) -> str:
        """``path`` (inside this filesystem) as a location that pastes back: a local path, or a URI with this
        one's query (the endpoint of an S3-compatible server)."""
        query = self.uri.partition("?")[2]
        return self.display_path(path) + (f"?{query}" if query and not self.is_local else "")

    def display(self, *parts: str) -> str:
        """A human-readable location (``s3://bucket/prefix/run`` or an absolute path), without the query."""
        return self.display_path(self.join(*parts))

    def display_path(self, path: str) -> str:
        return path if self.is_local else f"{self.uri.partition('://')[0]}://{path.lstrip('/')}"

    def ray_kwargs(self) -> dict:
        """``RunConfig`` keyword arguments for this storage."""
        kwargs = {"storage_path": self.path}
        if self.filesystem is not None:
            kwargs["storage_filesystem"] = self.filesystem
        return kwargs


def local_path(location: str | os.PathLike, base: str | os.PathLike | None = None) -> Path | None:
    """The absolute local path ``location`` (a path, ``file://``, relative to ``base`` or the cwd) names; None for
    an object-store or other URI (``s3://``). The one rule for every local location (runs, data, MLflow)."""
    text = str(location).strip()
    if "://" in text and not text.startswith("file://"):
        return None
    path = Path(text.removeprefix("file://")).expanduser()
    return (Path(base or os.getcwd()) / path).resolve()


def resolve_storage(uri_or_path: str, base: str | os.PathLike | None = None, what: str = "run.storage") -> Storage:
    """Parse ``run.storage`` (or another location, named ``what`` in errors) into a :class:`Storage`.

    Relative local paths resolve against ``base`` (default: the current directory).
    """
    text = str(uri_or_path).strip()
    if not text:
        raise StorageError(f"{what} is empty; give a directory or a URI such as s3://bucket/prefix")
    path = local_path(text, base)
    if path is not None:
        return Storage(uri=str(path), path=str(path), filesystem=None)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except OSError as err:  # pyarrow reached for the endpoint (S3 region lookup, apache/arrow#25824) and got no answer
        raise StorageError(unreachable_endpoint_message(text, err, what)) from err
    except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) or ArrowNotImplementedError
        raise StorageError(f"{what}={text!r} is not a storage URI pyarrow understands: {err}") from err
    return Storage(uri=text, path=path.rstrip("/"), filesystem=fs)


def unreachable_endpoint_message(uri: str, err: BaseException, what: str = "run.storage") -> str:
    """The error for a storage URI (``what``: the setting or flag it came from) whose endpoint pyarrow could
    not reach while resolving it."""
    flag = "--storage" if what == "run.storage" else what
    scheme, rest = uri.split("://", 1)
    where = rest.split("?", 1)[0]
    detail = str(err).split("; Details: ")[-1]
    text = str(err).lower()
    network = any(w in text for w in ("network_connection", "resolve", "connect", "timed out", "timeout"))
    if scheme == "s3" and not network:
        return (
            f"{what}={uri!r}: S3 could not open {where} ({detail}); check the bucket name and the "
            "AWS_* credentials, or name an S3-compatible endpoint with ?endpoint_override=HOST:PORT&scheme=http"
        )
    if scheme == "s3":
        return (
            f"{what}={uri!r}: the S3 endpoint could not be reached ({detail}). A plain s3://bucket/prefix "
            "means AWS S3, found through the bucket's region; for MinIO/moto or another S3-compatible server "
            f"name the endpoint: {flag} 's3://{where}?endpoint_override=HOST:PORT&scheme=http' or export "
            "AWS_ENDPOINT_URL=http://HOST:PORT. For AWS itself check the network/DNS, or add &region=<region>."
        )
    return f"{what}={uri!r}: the storage endpoint could not be reached ({detail}); check the URI and the network"


def _with_timeout(fn, timeout_s: float, what: str):
    # In a thread: a pyarrow S3 call can block past its own timeouts, uninterruptibly (apache/arrow#40019).
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise StorageError(f"{what}: no answer within {timeout_s:.0f} s (is the endpoint reachable?)") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def check_writable(storage: Storage, timeout_s: float = 20.0) -> None:
    """Create the root and write, read back and delete a probe file; raise :class:`StorageError` if any fails."""
    where = storage.display()

    def probe() -> None:
        fs = storage.fs
        probe_path = storage.join(f".siamim-write-probe-{uuid.uuid4().hex}")
        fs.create_dir(storage.path, recursive=True)
        with fs.open_output_stream(probe_path) as f:
            f.write(b"ok")
        with fs.open_input_stream(probe_path) as f:
            if f.read() != b"ok":
                raise OSError("probe file read back different bytes")
        fs.delete_file(probe_path)

    try:
        _with_timeout(probe, timeout_s, f"storage {where} is not writable")
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(
            f"storage {where} is not writable ({type(err).__name__}: {err}). "
            "Pass --storage <a writable directory or s3://bucket/prefix URI>."
        ) from err


def exists(storage: Storage, *parts: str) -> bool:
    info = storage.fs.get_file_info(storage.join(*parts))
    return info.type != pafs.FileType.NotFound


def read_json(storage: Storage, *parts: str) -> dict:
    with storage.fs.open_input_stream(storage.join(*parts)) as f:
        return json.loads(f.read().decode())


def write_json(storage: Storage, data: dict, *parts: str) -> None:
    """Write ``data`` as JSON (temp file + move on local disk, one PUT on object stores)."""
    write_bytes(storage.fs, storage.join(*parts), json.dumps(data, indent=1, sort_keys=True).encode())


def list_runs(storage: Storage) -> list[dict]:
    """Run records (``siamim_run.json``) under the storage root, oldest first."""
    fs = storage.fs
    if not exists(storage):
        return []
    records = []
    for info in fs.get_file_info(pafs.FileSelector(storage.path, recursive=False)):
        if info.type != pafs.FileType.Directory:
            continue
        name = info.base_name
        if exists(storage, name, RUN_RECORD):
            try:
                records.append(read_json(storage, name, RUN_RECORD))
            except (OSError, ValueError):
                continue
    return sorted(records, key=lambda r: r.get("created", 0.0))
