"""One live launch per run name: a claim file in the run's storage folder.

``<storage>/<run name>/siamim_claim.json`` names the process that trains the run (host, pid and its
start time, the ``ray job submit`` id, the command) and a heartbeat it refreshes every
:data:`HEARTBEAT_S` seconds. A launch takes the claim (``with claim(...)``) before it writes anything
and gives it back however it ends; a second launch of the name meanwhile is refused
(:class:`RunClaimedError`, exit 2) naming the owner and ``--resume``.

Every write is conditional, so exactly one of concurrent launches wins: the claim is created
exclusively (``O_EXCL`` on local disk, S3's ``PUT If-None-Match: *``), and a gone owner's claim
(:func:`owner_gone`: its pid exited on its host, or its heartbeat is older than :data:`STALE_S`)
is replaced only while it still is that owner's (a file lock on local disk, ``PUT If-Match: <etag>``
on S3); the heartbeat is such a replacement too, so an owner notices a takeover.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import functools
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from siamim.orchestration import submission_id
from siamim.orchestration.errors import LaunchInputError
from siamim.orchestration.runs import storage as st

logger = logging.getLogger(__name__)

CLAIM = "siamim_claim.json"
HEARTBEAT_S = 30.0  # the owner rewrites its claim this often
STALE_S = 300.0  # a claim not refreshed for this long is taken over (its owner died where we cannot see)
RELEASE_WAIT_S = 10.0  # a launch waits this long for storage to give its claim back, then exits anyway


class RunClaimedError(LaunchInputError):
    """Another live launch holds the run name; the message names it and what to do."""


# --------------------------------------------------------------------------- the owner
def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def owner_record(token: str) -> dict:
    """This process as a claim's owner: ``{token, host, pid, pid_started, ray_job, command, created, heartbeat}``."""
    now = time.time()
    return {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": _process_started(os.getpid()),
        "ray_job": submission_id(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "created": now,
        "heartbeat": now,
    }


def owner_gone(claim: dict, now: float | None = None) -> str | None:
    """Why the owner of ``claim`` is gone (a sentence), or None while it may be live: on its host the pid
    answers (exited, or reused by a later process), elsewhere a heartbeat older than :data:`STALE_S`."""
    now = time.time() if now is None else now
    pid, started = claim.get("pid"), claim.get("pid_started")
    if claim.get("host") == socket.gethostname() and isinstance(pid, int):
        actual = _process_started(pid)
        if actual is None:
            return f"its process {pid} on this host has exited"
        if started is not None and abs(actual - float(started)) > 1.0:
            return f"its process {pid} on this host has exited (the pid now belongs to a later process)"
        return None
    age = now - float(claim.get("heartbeat") or claim.get("created") or 0.0)
    if age > STALE_S:
        return f"its heartbeat is {age:.0f} s old (more than {STALE_S:.0f} s: the owner stopped refreshing it)"
    return None


def describe(claim: dict) -> str:
    """``pid 123 on host h (ray job raysubmit_..., started 2025-01-01 12:00:00): jobs/pretrain.py ...``"""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(claim.get("created") or 0.0)))
    job = f"ray job {claim['ray_job']}, " if claim.get("ray_job") else ""
    command = f": {claim['command']}" if claim.get("command") else ""
    return f"pid {claim.get('pid')} on host {claim.get('host')} ({job}started {when}){command}"


# --------------------------------------------------------------------------- conditional writes
def read_claim(storage: st.Storage, run_name: str) -> dict | None:
    """The claim on ``run_name`` under ``storage``; None when there is none (or it is being written)."""
    try:
        return st.read_json(storage, run_name, CLAIM)
    except (OSError, ValueError):
        return None


def _s3(storage: st.Storage, run_name: str) -> tuple:
    """``(boto3 client, bucket, key)`` of the claim on S3 (pyarrow sends no conditional headers)."""
    import boto3

    query = dict(urllib.parse.parse_qsl(storage.uri.partition("?")[2]))
    endpoint = query.get("endpoint_override")
    url = f"{query.get('scheme', 'https')}://{endpoint}" if endpoint else None
    region = query.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    bucket, _, key = storage.join(run_name, CLAIM).partition("/")
    return boto3.client("s3", endpoint_url=url, region_name=region or "us-east-1"), bucket, key


def _precondition_failed(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _create(storage: st.Storage, run_name: str, record: dict) -> bool:
    """Write the claim only if none exists (exclusive create); False when one does."""
    payload = json.dumps(record, indent=1, sort_keys=True).encode()
    if not storage.is_local:
        client, bucket, key = _s3(storage, run_name)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=payload, IfNoneMatch="*")
        except Exception as err:
            if _precondition_failed(err):
                return False
            raise
        return True
    path = Path(storage.join(run_name, CLAIM))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
    return True


def _replace(storage: st.Storage, run_name: str, token: str, record: dict) -> bool:
    """Overwrite the claim with ``record`` only while its token is ``token``; False otherwise."""
    payload = json.dumps(record, indent=1, sort_keys=True).encode()
    if not storage.is_local:
        client, bucket, key = _s3(storage, run_name)
        try:
            current = client.get_object(Bucket=bucket, Key=key)
            if json.loads(current["Body"].read()).get("token") != token:
                return False
            client.put_object(Bucket=bucket, Key=key, Body=payload, IfMatch=current["ETag"])
        except Exception as err:
            if _precondition_failed(err) or "NoSuchKey" in str(err) or isinstance(err, ValueError):
                return False
            raise
        return True
    try:
        f = open(storage.join(run_name, CLAIM), "r+b")
    except FileNotFoundError:
        return False
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if json.loads(f.read() or b"{}").get("token") != token:
                return False
        except ValueError:
            return False
        f.seek(0)
        f.truncate()
        f.write(payload)
    return True


def _delete(storage: st.Storage, run_name: str) -> None:
    """Delete the claim file, and the run folder on local disk when nothing else is in it."""
    try:
        storage.fs.delete_file(storage.join(run_name, CLAIM))
    except FileNotFoundError:
        pass
    if storage.is_local:
        with contextlib.suppress(OSError):
            os.rmdir(storage.join(run_name))  # a launch refused before it wrote anything leaves no folder


def _refusal(run_name: str, storage: st.Storage, claim: dict) -> RunClaimedError:
    return RunClaimedError(
        f"run {run_name!r} is already being trained by {describe(claim)}; a second launch of that name would "
        f"write into the same folder {storage.display(run_name)}. Wait for it (or stop it: Ctrl-C, ray job stop) "
        f"and continue it with --resume {run_name} --storage '{storage.uri}', or pick another --name. If that "
        f"process is dead, its claim {storage.display(run_name, CLAIM)} is taken over by itself once it has "
        f"not been refreshed for {STALE_S:.0f} s (or at once on its own host); delete the file to take it now"
    )


# --------------------------------------------------------------------------- holding a claim
@dataclass
class Claim:
    """A claim this process holds on ``run_name``; :meth:`release` gives it back (idempotent)."""

    storage: st.Storage
    run_name: str
    record: dict
    heartbeat_s: float = HEARTBEAT_S
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread = field(init=False, repr=False)

    def ours(self) -> bool:
        current = read_claim(self.storage, self.run_name)
        return current is not None and current.get("token") == self.record["token"]

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"siamim-claim-{self.run_name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not _replace(
                    self.storage, self.run_name, self.record["token"], {**self.record, "heartbeat": time.time()}
                ):
                    logger.warning(
                        "the claim on run %s is no longer this process's (%s took it over): another launch may "
                        "be writing into %s",
                        self.run_name,
                        describe(read_claim(self.storage, self.run_name) or {}),
                        self.storage.display(self.run_name),
                    )
                    return
            except Exception as err:  # a storage hiccup: the next beat tries again (STALE_S >> HEARTBEAT_S)
                logger.warning("could not refresh the claim on run %s: %s", self.run_name, err)

    def release(self, wait_s: float = RELEASE_WAIT_S) -> None:
        """Stop the heartbeat and delete the claim if it is still ours, waiting at most ``wait_s``; storage that
        does not answer (pyarrow's calls hang in an S3 outage, apache/arrow#40019) gets the deletion retried in
        the background so the exit is not held."""
        self._stop.set()
        self._thread.join(timeout=wait_s)
        worker = threading.Thread(
            target=self._delete_when_possible, name=f"siamim-unclaim-{self.run_name}", daemon=True
        )
        worker.start()
        worker.join(timeout=wait_s)
        if worker.is_alive():
            logger.warning("the claim on run %s is not released yet (storage does not answer); retrying", self.run_name)

    def _delete_when_possible(self, every_s: float = 2.0) -> None:
        deadline = time.time() + STALE_S
        while True:
            try:
                if self.ours():
                    _delete(self.storage, self.run_name)
                return
            except Exception as err:
                if time.time() > deadline:  # the claim has gone stale by now: others take it over
                    logger.warning("could not release the claim on run %s: %s", self.run_name, err)
                    return
                time.sleep(every_s)


def _take(storage: st.Storage, run_name: str, log, heartbeat_s: float) -> Claim:
    record = owner_record(uuid.uuid4().hex)
    if not _create(storage, run_name, record):
        current = read_claim(storage, run_name)
        if current is None:  # released (or half-written) meanwhile: one more exclusive try
            if not _create(storage, run_name, record):
                raise _refusal(run_name, storage, read_claim(storage, run_name) or {})
        else:
            why = owner_gone(current)
            if why is None:
                raise _refusal(run_name, storage, current)
            if not _replace(storage, run_name, current.get("token"), record):  # another launch took it first
                raise _refusal(run_name, storage, read_claim(storage, run_name) or {})
            log(f"[siamim] taking over the claim on run {run_name!r} of {describe(current)}: {why}")
    return Claim(storage, run_name, record, heartbeat_s)  # its heartbeat starts


@contextlib.contextmanager
def claim(storage: st.Storage, run_name: str, log=print, *, heartbeat_s: float = HEARTBEAT_S):
    """Hold the claim on ``run_name`` under ``storage`` for the block, or raise :class:`RunClaimedError` (exit 2).

    A live owner's claim refuses; a gone owner's (:func:`owner_gone`) is taken over with a line through ``log``.
    """
    held = _take(storage, run_name, log, heartbeat_s)
    try:
        yield held
    finally:
        held.release()


_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("siamim_claims", default=None)


def take_claim(storage: st.Storage, run_name: str, log=print, *, heartbeat_s: float = HEARTBEAT_S) -> Claim:
    """:func:`claim` for a launch decorated with :func:`releases_claims` (released when it ends); outside one
    the caller calls :meth:`Claim.release`."""
    stack = _HELD.get()
    if stack is None:
        return _take(storage, run_name, log, heartbeat_s)
    return stack.enter_context(claim(storage, run_name, log, heartbeat_s=heartbeat_s))


def releases_claims(fn):
    """Decorate a launch: every claim :func:`take_claim` takes during ``fn`` is released when ``fn`` ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _HELD.set(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                _HELD.reset(token)

    return wrapper


__all__ = ["CLAIM", "Claim", "RunClaimedError", "claim", "owner_gone", "read_claim", "releases_claims", "take_claim"]
