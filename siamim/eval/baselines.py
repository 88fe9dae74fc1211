"""The floors every table carries: raw pixels and a random-init encoder.

Both go through exactly the same protocol code as a checkpoint
(:mod:`siamim.eval.runner`), so their numbers are comparable column for column.
"""

from __future__ import annotations

import torch

from siamim.eval.representation import EncoderRepresentation, PixelRepresentation
from siamim.model.encoder import build_encoder

BASELINES = ("pixels", "random")


def pixel_representation(cfg) -> PixelRepresentation:
    """Raw normalised pixels at ``cfg.data.img_size``; tokens are the ``cfg.model.patch_size`` patches."""
    return PixelRepresentation(cfg.model.patch_size, name="pixels")


def random_representation(cfg, seed: int = 0) -> EncoderRepresentation:
    """The encoder of ``cfg.model`` at its initialisation (seeded), never trained."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        enc = build_encoder(cfg.model, cfg.data.img_size)
    finally:
        torch.random.set_rng_state(state)
    return EncoderRepresentation(enc, name="random")


def baseline_representation(name: str, cfg, seed: int = 0):
    """``"pixels"`` or ``"random"`` -> its representation; any other name raises with the valid ones."""
    if name == "pixels":
        return pixel_representation(cfg)
    if name == "random":
        return random_representation(cfg, seed)
    import difflib

    close = difflib.get_close_matches(name, BASELINES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINES)}{hint}")
