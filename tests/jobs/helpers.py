"""Shared constants of the job tests (imported by the test modules; conftest holds the fixtures)."""

from __future__ import annotations

import sys
from pathlib import Path

from siamim.config import parse_override

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PRETRAIN = REPO / "jobs" / "pretrain.py"

# Overrides for a tiny 2-worker CPU run (a few seconds of training).
TINY_ARGS = [
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.batch_size=32",
    "data.train_subset=512",
    "data.num_workers=0",
    "eval.knn.train_subset=500",
    "eval.knn.test_subset=1000",  # fewer kNN queries: the largest cost of a tiny run
    "run.num_workers=2",
]

# The same run as a dict of dotted keys (load_config's dict form, Ray Tune's param_space form).
TINY = dict(parse_override(o) for o in TINY_ARGS)


def knn_tolerance(queries: int) -> float:
    """kNN top-1 points (%) two of ``queries`` query images are worth: the bound of a run that should equal another.

    A restarted or resumed run computes the same losses to ~1e-6 (the loop is deterministic), so its kNN
    top-1 equals the uninterrupted run's up to a vote tie that a last-bit difference flips.
    """
    return 200.0 / queries


def submit_pretrain_cmd(dashboard: str, submission_id: str, *args: str, wait: bool = True) -> list[str]:
    """``ray job submit`` (of this checkout, to the head at ``dashboard``) of ``jobs/pretrain.py --config tiny *args``."""
    return [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        str(REPO),
        "--submission-id",
        submission_id,
        *([] if wait else ["--no-wait"]),
        "--",
        sys.executable,
        "jobs/pretrain.py",
        "--config",
        "tiny",
        *args,
    ]
