"""The training loop and what it needs: schedules, optimiser groups."""

from siamim.train.loop import pretrain

__all__ = ["pretrain"]
