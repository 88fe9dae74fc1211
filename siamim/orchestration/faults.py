"""Fault injection for the fault-tolerance tests: a worker that raises mid-run, outside the core loop.

``SIAMIM_FAIL_AT_STEP=N`` in the driver's environment (tests set it; nothing else
does) reaches the Ray Train workers through the trainer's runtime environment
(:func:`siamim.orchestration.trainer.build_trainer`). Rank 0 then raises
:class:`InjectedFault` when the loop reports step ``N`` (the loop reports every
step's metrics at its log interval), once: only in a worker group that started
from scratch, so the group Ray restarts from a checkpoint trains on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

FAIL_AT_STEP_ENV = "SIAMIM_FAIL_AT_STEP"


class InjectedFault(RuntimeError):
    """Raised by the ``SIAMIM_FAIL_AT_STEP`` hook (fault-tolerance tests only)."""


def fail_at_step() -> int | None:
    """The step of ``$SIAMIM_FAIL_AT_STEP``, or None when it is unset or empty."""
    raw = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"{FAIL_AT_STEP_ENV}={raw!r}: give a step number") from err


def with_fault(reporter: Callable[[dict], None], step: int | None, fresh: bool) -> Callable[[dict], None]:
    """``reporter`` that raises :class:`InjectedFault` on the metrics of ``step`` (when ``fresh``), else itself."""
    if step is None or not fresh:
        return reporter

    def report(metrics: dict) -> None:
        reporter(metrics)
        if int(metrics["step"]) == step:
            raise InjectedFault(f"{FAIL_AT_STEP_ENV}={step}: injected failure after step {step}")

    return report
