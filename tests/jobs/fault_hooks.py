"""Worker hooks (``SIAMIM_WORKER_HOOK``) that the fault-tolerance tests inject; the shipped code knows none of them.

Set ``SIAMIM_WORKER_HOOK=<this file>:<function>`` (:func:`hook_env`) in the driver's
environment; the trainer forwards it to every Ray Train worker.
"""

from __future__ import annotations

from pathlib import Path

from siamim.orchestration.driver.hooks import WORKER_HOOK_ENV

FAIL_STEP = 3  # the step fail_once_at_step_3 raises after
FAILING_TRIAL = "j-s1"  # the grid trial (run name) fail_trial_j_s1 fails on every attempt


class InjectedFault(RuntimeError):
    """A failure the tests inject into a worker."""


def hook_env(function: str) -> dict[str, str]:
    """``{SIAMIM_WORKER_HOOK: "<this file>:<function>"}``."""
    return {WORKER_HOOK_ENV: f"{Path(__file__).resolve()}:{function}"}


def fail_once_at_step_3(metrics: dict, *, cfg, rank: int, fresh: bool) -> None:
    """Rank 0 raises after step 3's metrics, only in a worker group that started from scratch."""
    if rank == 0 and fresh and int(metrics["step"]) == FAIL_STEP:
        raise InjectedFault(f"injected failure after step {FAIL_STEP}")


def fail_trial_j_s1(metrics: dict, *, cfg, rank: int, fresh: bool) -> None:
    """Grid trial ``j/1`` (its run name ``j-s1``) raises at its first report, on every attempt."""
    if cfg.run.name == FAILING_TRIAL:
        raise InjectedFault(f"injected failure of trial {FAILING_TRIAL}")
