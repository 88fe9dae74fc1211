"""Progress lines with throughput and ETA: the training loop's steps, and any counted task (evaluation).

:class:`TrainProgress` prints the pretraining loop's lines (rank 0);
:class:`TaskProgress` prints throttled ``done/total`` lines of a named task (feature
extraction, a probe's steps, the final kNN), whoever runs it.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class TrainProgress:
    """Prints ``epoch | step/total | loss | lr | img/s | ETA`` every logging interval.

    The ETA is to ``stop_step`` (``train.max_steps`` or the end of the schedule),
    from the mean step time since the first step (which includes start-up).
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        steps_per_epoch: int,
        enabled: bool = True,
        stop_step: int | None = None,
    ):
        self.total = total_steps
        self.stop = stop_step or total_steps
        self.start_step = start_step
        self.steps_per_epoch = steps_per_epoch
        self.enabled = enabled
        self.t_first: float | None = None
        self.step_first = start_step

    def update(self, metrics: dict, log: bool) -> None:
        now = time.perf_counter()
        step = int(metrics["step"])
        if self.t_first is None:  # time from the end of the first step: excludes start-up
            self.t_first, self.step_first = now, step
        if not (self.enabled and log):
            return
        done = step - self.step_first
        per_step = (now - self.t_first) / done if done > 0 else float("nan")
        eta = format_seconds(per_step * (self.stop - step)) if done > 0 else "?"
        monitor = f" | kNN monitor {metrics['knn_monitor']:.2f}%" if "knn_monitor" in metrics else ""
        if "rankme_monitor" in metrics:
            monitor += f" | RankMe {metrics['rankme_monitor']:.1f}"
        print(
            f"[siamim] epoch {metrics['epoch']:.2f} | step {step}/{self.stop} | loss {metrics['loss']:.4f} | "
            f"lr {metrics['lr']:.2e} | {metrics['images_per_s']:.0f} img/s | ETA {eta}{monitor}",
            flush=True,
        )


Report = Callable[..., None]


class TaskProgress:
    """Throttled lines ``<prefix> <what> done/total[ loss L] (<rate> <unit>/s, ETA h:mm:ss)``.

    ``progress = TaskProgress(print, "[lin]")``; ``report = progress("probe step", unit="step")``;
    ``report(done, total)`` or ``report(done, total, loss)``. All reporters of one ``TaskProgress``
    share the throttle: a line at most every ``every`` seconds, plus the first one and each
    ``done == total`` (which ends in ``done)`` instead of an ETA). ``log=None``: silent.
    """

    def __init__(self, log: Callable[[str], None] | None, prefix: str, every: float = 10.0):
        self.log, self.prefix, self.every = log, prefix, every
        self.last = -math.inf

    def __call__(self, what: str, unit: str = "it") -> Report:
        start = time.monotonic()

        def report(done: int, total: int, *extra: float) -> None:
            now = time.monotonic()
            if self.log is None or (done < total and now - self.last < self.every):
                return
            self.last = now
            rate = done / max(now - start, 1e-9)
            tail = f" loss {extra[0]:.4f}" if extra else ""
            eta = "done" if done >= total else f"ETA {format_seconds((total - done) / max(rate, 1e-9))}"
            self.log(f"{self.prefix} {what} {done}/{total}{tail} ({rate:.0f} {unit}/s, {eta})")

        return report
