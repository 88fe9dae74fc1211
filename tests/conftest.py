"""Shared fixtures: small configs over the real Fashion-MNIST data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from siamim.config import load_config  # noqa: E402

# A model small enough for a few hundred CPU steps inside the test budget.
SMALL = [
    "data.num_workers=0",
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=64",
    "model.decoder_heads=2",
    "model.projector_depth=1",
    "model.predictor_depth=1",
    "train.batch_size=32",
    "train.log_every=1000",
    "train.checkpoint_every=0",
    "optim.warmup_epochs=0.02",
]


@pytest.fixture
def small_cfg(tmp_path):
    def make(*overrides: str):
        return load_config("tiny", [*SMALL, f"train.output_dir={tmp_path}/run", *overrides])

    return make
