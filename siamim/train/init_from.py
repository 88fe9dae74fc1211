"""``train.init_from``: start pretraining from another checkpoint's encoder.

Any checkpoint :func:`siamim.foreign.read_checkpoint` reads (this project's training
state or encoder file, a timm export folder, an official SiameseIM or MAE release file)
gives the encoder weights; they are loaded, strictly, into the online encoder and into
the EMA target's copy (so the target starts equal to the online branch, as in a fresh
run). Projector, predictor and optimiser start fresh: the releases' heads have other
shapes and names, and a new run has its own schedule. A resumed run ignores the key
(its checkpoint holds everything). The path must be readable by every worker (a
shared filesystem on a cluster).

The run's config must describe the checkpoint's encoder; a mismatch is an error naming
the keys to set (the architecture inferred from the weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siamim.config import Config
    from siamim.model.siamim import SiameseIM

ARCH_KEYS = ("data.img_size", "model.patch_size", "model.embed_dim", "model.depth", "model.mlp_ratio")


class InitFromError(ValueError):
    """``train.init_from`` names a checkpoint whose encoder does not fit the run's config."""


def _arch(cfg) -> dict:
    d, m = cfg.data, cfg.model
    return dict(zip(ARCH_KEYS, (d.img_size, m.patch_size, m.embed_dim, m.depth, m.mlp_ratio), strict=True))


def init_encoder_from(model: SiameseIM, cfg: Config, path: str) -> dict:
    """Load the encoder of checkpoint ``path`` into ``model``'s online encoder and EMA target encoder.

    Returns ``{"layout", "step"}`` of the source (``layout``: ``siamim``, ``official-siamim``, ``mae``).
    Raises :class:`InitFromError` when the architecture differs from ``cfg``'s.
    """
    from siamim.checkpoint import export_encoder
    from siamim.config import from_dict
    from siamim.foreign import read_checkpoint

    state = read_checkpoint(path, num_heads=cfg.model.num_heads)
    weights = export_encoder(state)  # [timm key] -> tensor
    theirs, ours = _arch(from_dict(state["config"])), _arch(cfg)
    if theirs != ours:
        fix = " ".join(f"{k}={v}" for k, v in theirs.items() if ours[k] != v)
        raise InitFromError(f"train.init_from={path}: its encoder does not fit this config; set {fix}")
    encoders = [model.online.encoder] + ([model.target.encoder] if model.target is not None else [])
    for encoder in encoders:
        encoder.load_state_dict(weights, strict=True)
    return {"layout": state.get("source_layout", "siamim"), "step": int(state.get("step", 0))}
