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


HOLD_STEP = 17  # the step hold_a_one_worker_group stops a 1-worker group at
HOLD_S = 300.0  # at most this long: a group that is never replaced then finishes (and the test fails)


def hold_a_one_worker_group(metrics: dict, *, cfg, rank: int, fresh: bool) -> None:
    """A group of one worker (an elastic group shrunk by a lost node) stops at step 17 until Ray replaces it.

    Keeps a shrunk run from finishing before Ray Train's next resize check has seen the node that joined
    again (on a loaded 2-core box the few steps left may take less than a node's start-up). The hold
    changes no number: it only sleeps, after step 17's metrics and before its report (so the 1-worker
    group's last logged step is 16, its checkpoint the one the grown group restores).
    """
    import time

    import ray.train

    if int(metrics["step"]) == HOLD_STEP and ray.train.get_context().get_world_size() == 1:
        print(f"[test hook] 1-worker group held at step {HOLD_STEP}", flush=True)
        time.sleep(HOLD_S)
