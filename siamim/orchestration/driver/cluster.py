"""The driver's Ray connection: join the job's cluster, a given address, or start a local instance.

Ray workers import ``siamim`` from the installed package (``pip install -e .``,
scripts/setup.sh) on the driver's node; a submitted job (``ray job submit
--working-dir``) gets the uploaded checkout on every node through the job's
``working_dir``; a driver that joins a cluster itself (``--address``) from a
checkout uploads it the same way (its runtime env's ``working_dir``; Ray leaves out
what ``.gitignore`` names). The checkout, not the package alone (``py_modules``):
the config presets (``configs/``) live beside the package.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from siamim.orchestration import REPO_ROOT
from siamim.orchestration.driver.hooks import forwarded_env

logger = logging.getLogger(__name__)


_STARTED_LOCAL = False  # ensure_ray started a local instance in this process


def _python_sigterm() -> None:
    """Give SIGTERM back to Python's handler (``sys.exit`` as ``ray.init`` set it, or the job's own).

    Ray's core worker installs a C++ failure-signal handler over it, which dumps a
    stack and sometimes aborts the driver (exit -6) before Python can unwind and mark
    the MLflow run KILLED (abseil's 3 s abort alarm: ray-project/ray#64830).
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)


# Ports Ray and the dev stack bind by default whatever else is configured (GCS 6379, dashboard 8265, client
# 10001, dashboard agent 52365; dev stack 5000, 6380, 9000). A kernel-chosen free port can be one of them: a
# dashboard put on 52365 then races the node's own dashboard agent for it and fails to start.
DEFAULT_PORTS = frozenset({5000, 6379, 6380, 8265, 9000, 10001, 52365})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and is none of :data:`DEFAULT_PORTS`."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in DEFAULT_PORTS:
            return port


def _local_runtime_env() -> tuple[dict, dict]:
    """``(runtime_env, ray.init kwargs)`` of a new local instance (one node: the installed package serves)."""
    # One node that is never drained: Ray Train's node-preemption watcher has nothing to watch, and its
    # creation logs an ERROR line ("PreemptionWatcher ... constructor arguments in the object store").
    # The variable is the watcher's off switch (ray-project/ray#63807); no issue for the ERROR as of Ray 2.60.
    env_vars = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    # Ray Train's detached PlacementGroupCleaner polls the state API with no address: with another Ray
    # instance on the host it fails ("Found multiple active Ray instances", ray-project/ray#25639) and
    # prints tracebacks. Tell every actor of this job which dashboard is ours.
    port = free_port()
    env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return {"env_vars": env_vars}, {"dashboard_port": port}


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS`` / the job's cluster, or start a local Ray instance.

    Returns True when this call started an embedded (local, autoscaler-less) instance.
    """
    import ray

    global _STARTED_LOCAL
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a submitted job: the supervisor set everything
        ray.init(address=address)
        _python_sigterm()
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A new local instance, never whatever /tmp/ray/ray_current_cluster names (a stale file from a
        # dead `ray start` would hang the job: ray-project/ray#45771); join a running head with
        # --address auto / RAY_ADDRESS.
        address = "local"
    if address == "local":
        runtime_env, kwargs = _local_runtime_env()
    elif (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "configs").is_dir():
        runtime_env, kwargs = {"working_dir": str(REPO_ROOT)}, {}  # the cluster's other nodes lack this checkout
    else:  # an installed (non-editable) package: the cluster's nodes have their own installation
        runtime_env, kwargs = {}, {}
    forwarded = forwarded_env()  # the worker hook reaches a grid's trials (their workers get it from the trainer)
    if forwarded:
        runtime_env = {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), **forwarded}}
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
    _python_sigterm()
    _STARTED_LOCAL = address == "local"
    return _STARTED_LOCAL


def shutdown_embedded_ray(timeout_s: float = 15.0) -> None:
    """Stop the local Ray instance this process started, after Ray Train's helpers have exited.

    Ray Train leaves a detached ``PlacementGroupCleaner`` actor (ray-project/ray#58515) polling
    the GCS for a moment after ``fit()``; stopping the instance under it (interpreter exit) prints
    "Timed out while waiting for GCS" tracebacks (no upstream issue as of Ray 2.60). Waiting for it
    first ends runs cleanly.
    """
    import ray

    if not (_STARTED_LOCAL and ray.is_initialized()):
        return
    try:
        from ray.util.state import list_actors

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            alive = list_actors(
                filters=[("class_name", "=", "PlacementGroupCleaner"), ("state", "=", "ALIVE")],
                raise_on_missing_output=False,
            )
            if not alive:
                break
            time.sleep(0.5)
    except Exception as err:  # the state API is best effort here; shut down regardless
        logger.debug("waiting for Ray Train's PlacementGroupCleaner: %s", err)
    ray.shutdown()
