"""Checkpoints: the full training state, and the encoder alone for timm.

A checkpoint file (``checkpoint.pt``) is a ``torch.save`` dict:
``{"format": 1, "step", "config" (dict), "model" (SiameseIM state dict: online
and target), "optimizer", "rng"}`` plus any keys a caller adds (the platform
adds its MLflow run id). Files are written atomically (temp file + rename), so a
crash mid-save never damages the previous checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from siamim.config import Config, from_dict
from siamim.model.encoder import build_encoder, timm_kwargs

FORMAT_VERSION = 1
ENCODER_PREFIX = "online.encoder."


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (or a directory holding ``checkpoint.pt``) onto the CPU."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a siamim checkpoint (format {FORMAT_VERSION})")
    return state


def export_encoder(state: dict) -> dict[str, torch.Tensor]:
    """The online encoder's weights with timm's key names (no prefix).

    ``timm.create_model(cfg.model.timm_name, num_classes=0, **timm_kwargs(...))``
    loads the result with ``strict=True``.
    """
    return {k[len(ENCODER_PREFIX):]: v for k, v in state["model"].items() if k.startswith(ENCODER_PREFIX)}


def load_encoder(path_or_state: str | os.PathLike | dict) -> tuple[torch.nn.Module, Config]:
    """The pretrained encoder (a timm ``VisionTransformer``, eval mode) and the run's config."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    cfg = from_dict(state["config"])
    encoder = build_encoder(cfg.model, cfg.data.img_size)
    encoder.load_state_dict(export_encoder(state), strict=True)
    return encoder.eval(), cfg


def encoder_timm_spec(cfg: Config) -> tuple[str, dict]:
    """``(model name, kwargs)`` for ``timm.create_model`` matching the exported encoder."""
    return cfg.model.timm_name, timm_kwargs(cfg.model, cfg.data.img_size)
