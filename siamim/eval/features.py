"""Frozen-feature extraction from a timm ViT encoder."""

from __future__ import annotations

import numpy as np
import torch

from siamim.data.sources import ImageSource, eval_batch


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    source: ImageSource,
    img_size: int,
    indices: np.ndarray | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    pool: str = "cls",
    progress=None,
) -> torch.Tensor:
    """Features of ``source`` images under the encoder in eval mode.

    Args:
        pool: ``"cls"`` (the cls token after the final norm), ``"mean"`` (mean
            of the patch tokens) or ``"tokens"`` (all patch tokens).
        progress: optional ``progress(done, total)`` called after every batch.
    Returns:
        float32 ``[N, D]`` for cls/mean, ``[N, L, D]`` for tokens (on CPU).
    """
    if pool not in ("cls", "mean", "tokens"):
        raise ValueError(f"pool must be 'cls', 'mean' or 'tokens', got {pool!r}")
    idx = np.arange(len(source)) if indices is None else np.asarray(indices)
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        x = eval_batch(source, idx[start : start + batch_size], img_size).to(device)
        tokens = encoder.forward_features(x)  # [B, 1 + L, D]
        if pool == "cls":
            feats = tokens[:, 0]
        elif pool == "mean":
            feats = tokens[:, 1:].mean(dim=1)
        else:
            feats = tokens[:, 1:]
        out.append(feats.float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(idx)), len(idx))
    encoder.train(was_training)
    return torch.cat(out)
