"""Progress lines with throughput and ETA for long runs (rank 0)."""

from __future__ import annotations

import datetime
import time


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class Progress:
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
        print(
            f"[siamim] epoch {metrics['epoch']:.2f} | step {step}/{self.stop} | loss {metrics['loss']:.4f} | "
            f"lr {metrics['lr']:.2e} | {metrics['images_per_s']:.0f} img/s | ETA {eta}",
            flush=True,
        )
