"""Step-indexed schedules (pretraining, the probes and fine-tuning), so a resumed run continues them exactly."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """The lr of 0-based ``step``: linear warm-up from 0 (at step 0) to ``peak_lr`` over ``warmup_steps``
    (MAE's ``lr * epoch / warmup_epochs``), then half-cycle cosine to ``min_lr`` at ``total_steps`` (held after)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_at(step: int, total_steps: int, m0: float) -> float:
    """EMA momentum ``m(t) = 1 - (1 - m0) * (1 + cos(pi t / T)) / 2``: ``m0`` at 0, 1 at ``T``."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - m0) * (1.0 + math.cos(math.pi * progress)) / 2.0
