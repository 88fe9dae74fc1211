"""Worker hooks: your own code in every Ray Train worker, called with each metrics report of the loop.

``SIAMIM_WORKER_HOOK=<module>:<function>`` (an importable module) or
``SIAMIM_WORKER_HOOK=/path/to/file.py:<function>`` in the driver's environment
names it. The driver imports it during the preflight (a bad name exits 2 before
Ray starts); the trainer forwards the variable to the workers, where the function is
called after every report (every step's metrics, delivered at the log interval) as::

    hook(metrics, cfg=cfg, rank=rank, fresh=fresh)

``metrics`` is the loop's dict (``step``, ``loss``, ``lr``, ...), ``cfg`` the resolved
:class:`~siamim.config.Config`, ``rank`` the worker's world rank and ``fresh`` False in a
worker group that Ray restarted from a checkpoint (or a ``--resume``). Uses: extra
logging or profiling, and failure injection: a hook that raises fails the worker like any
error of the loop (the fault-tolerance tests inject their failures this way; the shipped
code knows nothing of them).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

from siamim.errors import UserError

WORKER_HOOK_ENV = "SIAMIM_WORKER_HOOK"
Hook = Callable[..., None]
# Driver environment variables the workers (and a grid's trials) get too: the hook and MLflow's
# system-metrics settings (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, ...).
FORWARDED_ENV = re.compile(rf"^({WORKER_HOOK_ENV}|MLFLOW_SYSTEM_METRICS_[A-Z_]+)$")


class HookError(UserError, ValueError):
    """``$SIAMIM_WORKER_HOOK`` does not name a callable; the message says what and how to fix it."""


def load_hook(spec: str | None = None) -> Hook | None:
    """The function ``spec`` (default ``$SIAMIM_WORKER_HOOK``) names, or None when it is unset or empty.

    Raises:
        HookError: not ``<module or file.py>:<function>``, or the module, file or function is missing.
    """
    spec = (os.environ.get(WORKER_HOOK_ENV, "") if spec is None else spec).strip()
    if not spec:
        return None
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise HookError(f"{WORKER_HOOK_ENV}={spec!r}: give <module>:<function> or /path/file.py:<function>")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise HookError(f"{WORKER_HOOK_ENV}={spec!r}: no file {path}")
        loader_spec = importlib.util.spec_from_file_location(f"siamim_worker_hook_{path.stem}", path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise HookError(f"{WORKER_HOOK_ENV}={spec!r}: cannot import {where!r} ({err})") from None
    hook = getattr(module, name, None)
    if not callable(hook):
        raise HookError(f"{WORKER_HOOK_ENV}={spec!r}: {where} has no function {name!r}")
    return hook


def forwarded_env() -> dict[str, str]:
    """The driver's environment variables that the workers need as well (:data:`FORWARDED_ENV`)."""
    return {k: v for k, v in os.environ.items() if FORWARDED_ENV.match(k)}
