"""A driver under ``ray job submit`` writes nowhere that dies with the job.

Ray 2.60 runs a submitted job's driver with ``RAY_JOB_CONFIG_JSON_ENV_VAR`` set (the
job's runtime env and metadata) and, when the job has a ``working_dir``, in Ray's
copy of it: ``<ray temp>/session_<time>/runtime_resources/working_dir_files/_ray_pkg_<hash>``
(both checked on a real head). That copy is a per-session cache under a hash name
that Ray garbage-collects once no job uses it and that a new head session leaves
behind, so a relative location or a default (``runs/ray``, ``./mlflow.db``) put a
job's MLflow store and checkpoints where nobody finds them again: the job exited 0
and its runs were gone. Every job that writes calls :func:`check_lasting` for each
location before any compute (torch-free: it costs milliseconds), and a location inside
that copy is exit 2 naming the flag and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from siamim.orchestration import job_config
from siamim.orchestration.errors import LaunchInputError
from siamim.orchestration.runs.storage import local_path
from siamim.orchestration.tracking import local_store_path, resolve_tracking_uri

STORAGE_FIX = 'an absolute path on a disk the cluster keeps (shared by every node) or an s3:// URI (dev stack: "$SIAMIM_S3_STORAGE")'
TRACKING_FIX = (
    'a tracking server, --tracking-uri http://HOST:PORT (dev stack: --tracking-uri "$MLFLOW_TRACKING_URI"; or '
    'submit with --runtime-env-json \'{"env_vars": {"MLFLOW_TRACKING_URI": "..."}}\'), or an absolute sqlite:/// '
    "path on a disk the cluster keeps"
)


class TemporaryLocationError(LaunchInputError):
    """A submitted job was asked to write inside Ray's temporary copy of its working directory (exit 2)."""


def job_copy() -> Path | None:
    """Ray's copy of the job's ``working_dir`` this driver runs in; None outside ``ray job submit`` (or without one)."""
    if not (job_config().get("runtime_env") or {}).get("working_dir"):
        return None
    return Path(os.getcwd()).resolve()


def check_lasting(location: str, what: str, fix: str = STORAGE_FIX) -> None:
    """Raise :class:`TemporaryLocationError` when this driver is a submitted job and ``location`` lies in its copy.

    ``what`` names the flag and how the value came (``"--storage runs/ray (the default)"``); ``fix`` what to give
    instead. A no-op outside ``ray job submit`` and for URIs.
    """
    copy = job_copy()
    path = local_path(location) if copy is not None else None
    if path is None or not path.is_relative_to(copy):
        return
    raise TemporaryLocationError(
        f"{what} is {path}, inside this job's working directory {copy}: under ray job submit that is Ray's "
        f"temporary copy of the uploaded files, and what is written there is lost with it (the job would exit 0 "
        f"and its runs be gone); give {fix}"
    )


def check_tracking_lasting(explicit: str | None, flag: str = "--tracking-uri") -> None:
    """:func:`check_lasting` for the MLflow store ``explicit`` / ``$MLFLOW_TRACKING_URI`` / the default resolve to."""
    uri = resolve_tracking_uri(explicit)
    path = local_store_path(uri)
    if path is None:
        return
    if explicit:
        what = f"{flag} {explicit}"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        what = f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']}"
    else:
        what = f"the MLflow store (no {flag}, no MLFLOW_TRACKING_URI: the default {uri})"
    check_lasting(str(path), what, TRACKING_FIX)


def job_storage(args, default: str, what: str) -> str:
    """The ``--storage`` of a grid or search job (``args``: its parsed flags; ``default`` when not given), absolute
    unless a URI. Outside a dry run it must outlast the job (:func:`check_lasting`), and so must the MLflow
    store; ``--dry-run`` with ``--resume`` is refused (a resumed ``what``, grid or search, keeps its trials)."""
    if args.dry_run and args.resume:
        raise LaunchInputError(f"--dry-run and --resume: a resumed {what} keeps its trials; drop --dry-run")
    storage = str(local_path(args.storage or default) or args.storage)
    if not args.dry_run:  # under ray job submit: nothing inside Ray's temporary copy of the working directory
        check_lasting(storage, f"--storage {args.storage or default + ' (the default)'}")
        check_tracking_lasting(args.tracking_uri)
    return storage
