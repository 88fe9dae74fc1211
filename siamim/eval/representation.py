"""What the protocols evaluate: a frozen representation of an image batch.

A representation maps normalised images ``[B, 3, S, S]`` to a global feature
(``pool="cls"`` or ``"mean"``) or to patch tokens (``pool="tokens"``). Two kinds:

- :class:`EncoderRepresentation`: a timm ViT (a pretrained checkpoint, or the
  random-init baseline of :func:`siamim.eval.baselines.random_representation`).
- :class:`PixelRepresentation`: the raw-pixel baseline. ``cls`` = the flattened
  normalised pixels ``[B, 3*S*S]``; ``tokens`` = the pixels of each patch
  ``[B, L, 3*p*p]`` (row-major patches, like the ViT's token order); ``mean`` =
  the mean of those patch vectors ``[B, 3*p*p]``.
"""

from __future__ import annotations

import torch

from siamim.eval.imageset import ImageSet, SourceImageSet

POOLS = ("cls", "mean", "tokens")


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


class EncoderRepresentation:
    """Frozen features of a timm ``VisionTransformer`` (``forward_features`` -> ``[B, 1 + L, D]``)."""

    kind = "encoder"

    def __init__(self, encoder: torch.nn.Module, name: str = "checkpoint"):
        self.encoder = encoder
        self.name = name
        self.patch_size = int(encoder.patch_embed.patch_size[0])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        _check_pool(pool)
        tokens = self.encoder.forward_features(x)  # [B, 1 + L, D]
        if pool == "cls":
            return tokens[:, 0]
        if pool == "mean":
            return tokens[:, 1:].mean(dim=1)
        return tokens[:, 1:]

    def to(self, device) -> EncoderRepresentation:
        self.encoder.to(device)
        return self


class PixelRepresentation:
    """Raw-pixel baseline: the normalised pixels themselves are the features."""

    kind = "pixels"

    def __init__(self, patch_size: int, name: str = "pixels"):
        self.patch_size = patch_size
        self.name = name
        self.encoder = None

    def __call__(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        _check_pool(pool)
        if pool == "cls":
            return x.flatten(1)  # [B, 3*S*S]
        p = self.patch_size
        patches = torch.nn.functional.unfold(x, kernel_size=p, stride=p)  # [B, 3*p*p, L]
        patches = patches.transpose(1, 2)  # [B, L, 3*p*p], row-major like timm's patch embed
        return patches.mean(dim=1) if pool == "mean" else patches

    def to(self, device) -> PixelRepresentation:
        return self


@torch.no_grad()
def extract_many(
    rep,
    images: ImageSet | SourceImageSet,
    pools=("cls",),
    batch_size: int = 512,
    device="cpu",
    transform=None,
    progress=None,
) -> dict[str, torch.Tensor]:
    """Features of every image of ``images`` under ``rep`` for several pools in one pass (encoder in eval mode).

    The one feature extraction of the suite and of the pretraining job's final kNN.

    Args:
        pools: names from :data:`POOLS`.
        transform: optional ``f(images01 [B,3,S,S] float in [0,1], start) -> same`` applied
            before normalisation (the corruptions of the robustness protocol).
        progress: optional ``f(done, total)`` callback.
    Returns:
        ``{pool: float32 on CPU}``: ``[N, D]`` for ``cls``/``mean``, ``[N, L, D]`` for ``tokens``.
    """
    for pool in pools:
        _check_pool(pool)
    if len(images) == 0:
        raise ValueError("cannot extract features of an empty image set")
    enc = getattr(rep, "encoder", None)
    was_training = enc.training if enc is not None else False
    if enc is not None:
        enc.eval()
    out = {pool: [] for pool in pools}
    try:
        for start in range(0, len(images), batch_size):
            end = min(start + batch_size, len(images))
            x01 = images.uint8(start, end).to(device).float().div_(255.0)
            if transform is not None:
                x01 = transform(x01, start)
            x = images.normalize(x01)
            if enc is not None:
                tokens = enc.forward_features(x)  # [B, 1 + L, D]
                parts = {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(dim=1), "tokens": tokens[:, 1:]}
                for pool in pools:
                    out[pool].append(parts[pool].float().cpu())
            else:
                for pool in pools:
                    out[pool].append(rep(x, pool).float().cpu())
            if progress is not None:
                progress(end, len(images))
    finally:
        if enc is not None:
            enc.train(was_training)
    return {pool: torch.cat(parts) for pool, parts in out.items()}


def extract(
    rep,
    images: ImageSet | SourceImageSet,
    pool: str = "cls",
    batch_size: int = 512,
    device="cpu",
    transform=None,
    progress=None,
) -> torch.Tensor:
    """Features of one ``pool`` (see :func:`extract_many`): ``[N, D]`` or ``[N, L, D]``, float32 on CPU."""
    return extract_many(rep, images, (pool,), batch_size, device, transform, progress)[pool]
