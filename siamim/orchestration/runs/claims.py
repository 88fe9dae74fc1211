"""One live launch per run name: a claim file in the run's storage folder.

``<storage>/<run name>/siamim_claim.json`` names the process that trains the run
(host, pid and its start time, the ``ray job submit`` id, the command) and a
heartbeat that process refreshes every :data:`HEARTBEAT_S` seconds. A launch
(new or ``--resume``) takes the claim before it writes anything and gives it back
when it ends, however it ends; a second launch of the name meanwhile is refused
(:class:`RunClaimedError`, exit 2) naming the owner and ``--resume``.

A claim whose owner is gone is taken over with a warning: on the owner's host,
when its pid has exited (or now belongs to a later process); anywhere, when its
heartbeat is older than :data:`STALE_S` (a host that crashed, a SIGKILLed job on
another node). Taking works on local disk and on object stores alike: the claim is
created exclusively where the filesystem can (a hard link on local disk), then
read back after a short settle (:data:`SETTLE_S`; the only guard on object stores,
whose strong read-after-write consistency makes the last writer the one every
reader sees), and it is ours only if the token read back is ours.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from siamim.orchestration.runs import storage as st
from siamim.orchestration import submission_id
from siamim.orchestration.errors import LaunchInputError

logger = logging.getLogger(__name__)

CLAIM = "siamim_claim.json"
HEARTBEAT_S = 30.0  # the owner rewrites its claim this often
STALE_S = 300.0  # a claim not refreshed for this long is taken over (its owner died where we cannot see)
RELEASE_WAIT_S = 10.0  # a launch waits this long for storage to give its claim back, then exits anyway
SETTLE_S = 1.0  # wait between writing a claim and reading it back (concurrent writers: the last one wins)


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
    """Why the owner of ``claim`` is gone (a sentence), or None while it may be live.

    On the owner's host the pid answers (exited, or reused by a later process); elsewhere
    only the heartbeat does: older than :data:`STALE_S` seconds means gone.
    """
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


# --------------------------------------------------------------------------- the claim file
def read_claim(storage: st.Storage, run_name: str) -> dict | None:
    """The claim on ``run_name`` under ``storage``; None when there is none (or it is unreadable, being written)."""
    try:
        return st.read_json(storage, run_name, CLAIM)
    except (OSError, ValueError):  # none (FileNotFoundError), or half-written where writes are not atomic
        return None


def _create_exclusive(storage: st.Storage, run_name: str, payload: bytes) -> bool:
    """Write the claim file only if none exists: False when one does. Exclusive on local disk (a hard link
    fails if the name exists), a plain PUT on object stores (the read-back decides there)."""
    path = storage.join(run_name, CLAIM)
    if not storage.is_local:
        if st.exists(storage, run_name, CLAIM):
            return False
        storage.fs.create_dir(storage.join(run_name), recursive=True)
        with storage.fs.open_output_stream(path) as f:
            f.write(payload)
        return True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    Path(tmp).write_bytes(payload)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _delete(storage: st.Storage, run_name: str, *, tidy: bool = False) -> None:
    """Delete the claim file; ``tidy``: also the run folder on local disk when nothing else is in it."""
    try:
        storage.fs.delete_file(storage.join(run_name, CLAIM))
    except FileNotFoundError:
        pass
    if tidy and storage.is_local:
        try:
            os.rmdir(storage.join(run_name))  # a launch refused before it wrote anything leaves no folder
        except OSError:
            pass


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
    _thread: threading.Thread | None = field(default=None, repr=False)

    def ours(self) -> bool:
        current = read_claim(self.storage, self.run_name)
        return current is not None and current.get("token") == self.record["token"]

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"siamim-claim-{self.run_name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.ours():
                    logger.warning(
                        "the claim on run %s is no longer this process's (%s took it over): another launch may "
                        "be writing into %s",
                        self.run_name,
                        describe(read_claim(self.storage, self.run_name) or {}),
                        self.storage.display(self.run_name),
                    )
                    return
                self.record["heartbeat"] = time.time()
                st.write_json(self.storage, self.record, self.run_name, CLAIM)
            except Exception as err:  # a storage hiccup: the next beat tries again (STALE_S >> HEARTBEAT_S)
                logger.warning("could not refresh the claim on run %s: %s", self.run_name, err)

    def release(self, wait_s: float = RELEASE_WAIT_S) -> None:
        """Stop the heartbeat and delete the claim file if it is still ours, waiting at most ``wait_s``.

        Storage that does not answer (an S3 outage that ended the launch: pyarrow's calls then hang,
        apache/arrow#40019) must not hold the launch's exit: the deletion goes on in the background until
        storage answers, so a process that lives on (a notebook, a test) does not keep the name until the
        claim goes stale.
        """
        self._stop.set()
        if self._thread is not None:
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
                    _delete(self.storage, self.run_name, tidy=True)
                return
            except Exception as err:
                if time.time() > deadline:  # the claim has gone stale by now: others take it over
                    logger.warning("could not release the claim on run %s: %s", self.run_name, err)
                    return
                time.sleep(every_s)


_HELD: contextvars.ContextVar[list[Claim] | None] = contextvars.ContextVar("siamim_claims", default=None)


def take_claim(
    storage: st.Storage,
    run_name: str,
    log=print,
    *,
    settle_s: float = SETTLE_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> Claim:
    """Claim ``run_name`` under ``storage`` for this process, or raise :class:`RunClaimedError`.

    A live owner's claim refuses; a gone owner's (:func:`owner_gone`) is taken over with a
    line through ``log``. Inside a :func:`releases_claims` call the claim is given back when
    that call returns or raises; otherwise the caller calls :meth:`Claim.release`.
    Raises :class:`RunClaimedError` (exit 2 in the jobs).
    """
    record = owner_record(uuid.uuid4().hex)
    payload = json.dumps(record, indent=1, sort_keys=True).encode()
    created = _create_exclusive(storage, run_name, payload)
    if not created:
        current = read_claim(storage, run_name)
        if current is not None:
            why = owner_gone(current)
            if why is None:
                raise _refusal(run_name, storage, current)
            log(f"[siamim] taking over the claim on run {run_name!r} of {describe(current)}: {why}")
        _delete(storage, run_name)
        if not _create_exclusive(storage, run_name, payload):  # another launch took it in between
            raise _refusal(run_name, storage, read_claim(storage, run_name) or {})
    if settle_s > 0 and (not created or not storage.is_local):
        time.sleep(settle_s)  # a concurrent writer's PUT (or a second taker-over) lands before the read-back
    current = read_claim(storage, run_name)
    if current is None or current.get("token") != record["token"]:
        raise _refusal(run_name, storage, current or {})
    claim = Claim(storage, run_name, record, heartbeat_s)
    claim.start_heartbeat()
    held = _HELD.get()
    if held is not None:
        held.append(claim)
    return claim


def releases_claims(fn):
    """Decorate a launch: every claim :func:`take_claim` takes during ``fn`` is released when ``fn`` ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        held: list[Claim] = []
        token = _HELD.set(held)
        try:
            return fn(*args, **kwargs)
        finally:
            _HELD.reset(token)
            for claim in reversed(held):
                claim.release()

    return wrapper


__all__ = ["CLAIM", "Claim", "RunClaimedError", "owner_gone", "read_claim", "releases_claims", "take_claim"]
