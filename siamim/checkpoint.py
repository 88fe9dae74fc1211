"""Checkpoints: the full training state, and the encoder alone for timm.

A checkpoint file (``checkpoint.pt``) is a ``torch.save`` dict:
``{"format": 1, "step", "config" (dict), "model" (SiameseIM state dict: online
and target), "optimizer", "rng", "plan"}``. :func:`save_encoder` writes the
encoder alone (``"kind": "encoder"``), loadable by timm and by :func:`load_encoder`.
Files are written atomically (temp file + rename), so a crash mid-save never
damages the previous checkpoint.

Each file gets an integrity record beside it, written after the data:
``checkpoint.pt.integrity.json`` = ``{"file", "size", "sha256", "step", "plan"}``.
:func:`verify_checkpoint` checks a file against it, and :func:`load_checkpoint`
does so before unpickling, so a truncated or damaged file (an interrupted copy or
upload) is reported as such, in one line, instead of as a torch traceback.

torch, numpy and the model are imported inside the functions that need them: the
file layout (:data:`CHECKPOINT_FILE`, integrity records) serves torch-free callers
too (``jobs/evaluate.py`` names a missing checkpoint before importing torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from siamim.errors import UserError

if TYPE_CHECKING:
    import torch

    from siamim.config import Config

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"  # the file name inside a checkpoint directory (Ray's, the loop's output_dir)
ENCODER_PREFIX = "online.encoder."
INTEGRITY_SUFFIX = ".integrity.json"
ENCODER_KIND = "encoder"  # the "kind" of a file written by save_encoder (a training state has none)


class CheckpointError(UserError, ValueError):
    """A checkpoint file is damaged, truncated or not a siamim checkpoint; the message says which and what to do."""


def integrity_path(path: str | os.PathLike) -> Path:
    """Where the integrity record of checkpoint file ``path`` lives."""
    return Path(str(path) + INTEGRITY_SUFFIX)


def digest_stream(read, chunk: int = 1 << 20) -> tuple[int, str]:
    """``(size, sha256 hex)`` of everything ``read(n)`` yields (a file's or a pyarrow stream's ``read``)."""
    h, size = hashlib.sha256(), 0
    while True:
        block = read(chunk)
        if not block:
            return size, h.hexdigest()
        size += len(block)
        h.update(block)


def integrity_record(path: str | os.PathLike, state: dict | None = None) -> dict:
    """The integrity record of the file at ``path`` (size, sha256; step and plan from ``state``)."""
    with open(path, "rb") as f:
        size, sha = digest_stream(f.read)
    state = state or {}
    return {"file": Path(path).name, "size": size, "sha256": sha, "step": state.get("step"), "plan": state.get("plan")}


def check_integrity(where: str, record: dict, size: int, sha256: str) -> None:
    """Raise :class:`CheckpointError` unless ``(size, sha256)`` matches ``record``."""
    if size != record.get("size"):
        raise CheckpointError(
            f"checkpoint {where} is truncated or damaged: {size} bytes, its integrity record says {record.get('size')}"
        )
    if sha256 != record.get("sha256"):
        raise CheckpointError(f"checkpoint {where} is damaged: its sha256 does not match its integrity record")


def verify_checkpoint(path: str | os.PathLike) -> dict | None:
    """Check ``path`` against its integrity record; returns the record, or None for a file without one.

    Raises :class:`CheckpointError` (damaged/truncated) or ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    rec_path = integrity_path(path)
    if not rec_path.is_file():
        return None
    try:
        record = json.loads(rec_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"integrity record {rec_path} is unreadable ({err})") from err
    with open(path, "rb") as f:
        size, sha = digest_stream(f.read)
    check_integrity(str(path), record, size, sha)
    return record


def rng_state() -> dict:
    import numpy as np
    import torch

    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        record = integrity_record(tmp, state)
        record["file"] = path.name
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    rec_tmp = integrity_path(tmp)
    rec_tmp.write_text(json.dumps(record, indent=1))  # after the data: a record vouches for a complete file
    os.replace(rec_tmp, integrity_path(path))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (or a directory holding ``checkpoint.pt``) onto the CPU."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    verify_checkpoint(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): an interrupted copy or save; use an earlier checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # zip reader / unpickling errors of a truncated or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) cannot be read, it is truncated or not a torch "
            f"file ({reason}); use an earlier checkpoint"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a siamim checkpoint (format {FORMAT_VERSION})")
    return state


def export_encoder(state: dict) -> dict[str, torch.Tensor]:
    """The online encoder's weights with timm's key names (no prefix), from a training state or an encoder file.

    ``timm.create_model(cfg.model.timm_name, num_classes=0, **timm_kwargs(...))``
    loads the result with ``strict=True``.
    """
    if state.get("kind") == ENCODER_KIND:
        return dict(state["model"])
    return {k[len(ENCODER_PREFIX) :]: v for k, v in state["model"].items() if k.startswith(ENCODER_PREFIX)}


def save_encoder(path: str | os.PathLike, state: dict) -> Path:
    """Write the encoder of training state ``state`` alone (what evaluation and fine-tuning need).

    The file, ``{"format", "kind": "encoder", "step", "config", "model"}`` with
    ``model`` = :func:`export_encoder`, is a timm checkpoint
    (``timm.models.load_checkpoint(model, path)`` reads its ``model`` key) and
    a siamim one (:func:`load_checkpoint` / :func:`load_encoder`), about a third of
    the training state (no target network, no optimizer moments). Written like
    :func:`save_checkpoint` (atomic, with an integrity record).
    """
    encoder = {
        "format": FORMAT_VERSION,
        "kind": ENCODER_KIND,
        "step": state["step"],
        "config": state["config"],
        "model": {k: v.detach().clone() for k, v in export_encoder(state).items()},
    }
    return save_checkpoint(path, encoder)


def load_encoder(path_or_state: str | os.PathLike | dict) -> tuple[torch.nn.Module, Config]:
    """The pretrained encoder (a timm ``VisionTransformer``, eval mode) and the run's config."""
    from siamim.config import from_dict
    from siamim.model.encoder import build_encoder

    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    cfg = from_dict(state["config"])
    encoder = build_encoder(cfg.model, cfg.data.img_size)
    encoder.load_state_dict(export_encoder(state), strict=True)
    return encoder.eval(), cfg


def encoder_timm_spec(cfg: Config) -> tuple[str, dict]:
    """``(model name, kwargs)`` for ``timm.create_model`` matching the exported encoder."""
    from siamim.model.encoder import timm_kwargs

    return cfg.model.timm_name, timm_kwargs(cfg.model, cfg.data.img_size)
