"""Shared constants of the job tests (imported by the test modules; conftest holds the fixtures)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
