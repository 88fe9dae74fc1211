"""What patch features show, as numbers and maps: PCA colours, cross-view correspondence, cls attention.

Pure torch (no plotting, no Ray/MLflow): :mod:`siamim.eval.pictures` draws these, the
``correspondence`` protocol reports :func:`correspondence_score`.

**PCA** (DINOv2's picture): the patch features of every image in the set, ``[N*L, D]``,
centred by their mean, projected on their first three principal components (SVD,
deterministic). Signs are fixed (a component's sign is arbitrary): component 1 is
oriented so that the image *border* patches are negative on average, i.e.
**foreground = patches with a positive first component** (an assumption that holds for
object-centred images such as Fashion-MNIST's items); components 2 and 3 so that their
largest-magnitude loading is positive. Each component is min-max scaled to ``[0, 1]`` over
the whole set and shown as R, G, B; background patches are drawn black.

**Correspondence**: for a view pair with relative geometry ``g``, view-2 patch ``q``'s best
match is the view-1 patch of highest cosine similarity; its true position is
:func:`siamim.data.geometry.view2_patch_centres` (view-1 patch units). A query counts when
its true centre lies inside view 1 (``[-0.5, G-0.5]`` on both axes); it is *matched* when
the chosen patch's centre is within **one patch** (Euclidean, ``<= 1``) of the true centre.
The score is matched / counted over all pairs; the chance level (a uniformly random choice)
is the mean over counted queries of (view-1 patch centres within 1 patch) / ``G*G``; the
*same-position* level is what matching view-2 patch ``(r, c)`` to view-1 patch ``(r, c)`` scores
(a purely positional feature, e.g. a ViT's sin-cos position embedding, lands there).

**Cls attention**: the softmax attention of the cls query over the patch keys in the last
block, per head (timm's ``Attention``: ``qkv`` linear, optional q/k norms, scale ``d^-0.5``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamim.data.geometry import view2_patch_centres


def pca_maps(patch_feats: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA colours and foreground of patch features.

    Args:
        patch_feats: ``[N, L, D]`` (``L = grid*grid``, row-major patches).
    Returns:
        ``(rgb [N, G, G, 3] in [0, 1], foreground bool [N, G, G])``; ``rgb`` is 0 on the background.
    """
    n, length, dim = patch_feats.shape
    x = patch_feats.reshape(n * length, dim).double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh [min(NL, D), D]
    comps = vh[:3]
    if comps.shape[0] < 3:  # fewer than three feature dimensions: pad with zero components
        comps = torch.cat([comps, comps.new_zeros(3 - comps.shape[0], dim)])
    proj = (x @ comps.T).reshape(n, grid, grid, 3)  # [N, G, G, 3]
    border = torch.ones(grid, grid, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    if proj[:, border, 0].mean() > 0:  # orientation of component 1: the border is background
        proj[..., 0] = -proj[..., 0]
    for c in (1, 2):
        if comps[c, comps[c].abs().argmax()] < 0:
            proj[..., c] = -proj[..., c]
    foreground = proj[..., 0] > 0
    low = proj.reshape(-1, 3).min(dim=0).values
    high = proj.reshape(-1, 3).max(dim=0).values
    rgb = (proj - low) / (high - low).clamp(min=1e-12)
    rgb = torch.where(foreground[..., None], rgb, torch.zeros_like(rgb))
    return rgb.float(), foreground


def best_matches(feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
    """Index of each view-2 patch's most similar view-1 patch: ``[B, L, D] x [B, L, D] -> long [B, L]``."""
    sim = F.normalize(feats2.float(), dim=-1) @ F.normalize(feats1.float(), dim=-1).transpose(1, 2)  # [B, L2, L1]
    return sim.argmax(dim=-1)


def correspondence(
    feats1: torch.Tensor, feats2: torch.Tensor, geometry: torch.Tensor, grid: int
) -> dict[str, torch.Tensor]:
    """Matched and true positions of every view-2 patch.

    Args:
        feats1, feats2: patch features of view 1 and view 2, ``[B, L, D]``.
        geometry: ``[B, 6]`` (:func:`siamim.data.geometry.relative_geometry`).
    Returns:
        ``match [B, L, 2]`` (row, col of the chosen view-1 patch), ``true [B, L, 2]`` (view-1 patch
        units), ``inside bool [B, L]``, ``hit bool [B, L]`` (inside and within one patch),
        ``same_position bool [B, L]`` (inside, and view-1 patch ``(r, c)`` for view-2 patch ``(r, c)``
        would be within one patch: what a purely positional, feature-free guess scores),
        ``chance [B, L]`` (fraction of view-1 patches within one patch of the true centre).
    """
    idx = best_matches(feats1, feats2)  # [B, L]
    match = torch.stack([idx // grid, idx % grid], dim=-1).float()  # [B, L, 2]
    true = view2_patch_centres(geometry.cpu(), grid).to(match.device)  # [B, L, 2]
    inside = ((true >= -0.5) & (true <= grid - 0.5)).all(dim=-1)
    hit = inside & ((match - true).norm(dim=-1) <= 1.0)
    own = torch.stack([torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid], -1).float()
    same = inside & ((own.to(true.device) - true).norm(dim=-1) <= 1.0)  # the guess "same grid position"
    centres = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
    near = (torch.cdist(true.reshape(-1, 2), centres.float().to(true.device)) <= 1.0).float().mean(dim=-1)
    return {
        "match": match,
        "true": true,
        "inside": inside,
        "hit": hit,
        "same_position": same,
        "chance": near.reshape(inside.shape),
    }


def same_position_score(result: dict[str, torch.Tensor]) -> float:
    """Fraction of the counted queries that the feature-free guess "same grid position" matches."""
    counted = int(result["inside"].sum())
    return result["same_position"].sum().item() / counted if counted else float("nan")


def correspondence_score(result: dict[str, torch.Tensor]) -> tuple[float, float, int]:
    """``(fraction matched within one patch, chance level, counted queries)`` of :func:`correspondence`."""
    counted = int(result["inside"].sum())
    if counted == 0:
        return float("nan"), float("nan"), 0
    score = result["hit"].sum().item() / counted
    chance = result["chance"][result["inside"]].mean().item()
    return score, chance, counted


@torch.no_grad()
def cls_attention(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The cls token's attention over the patches in the last block of a timm ViT.

    Args:
        x: normalised images ``[B, 3, S, S]``.
    Returns:
        ``[B, heads, L]`` (each row sums to 1 minus the cls token's attention to itself).
    """
    seen: dict[str, torch.Tensor] = {}
    last = encoder.blocks[-1]
    handle = last.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    try:
        encoder.forward_features(x)
    finally:
        handle.remove()
    tokens = last.norm1(seen["x"])  # [B, N, D]
    attn = last.attn
    b, n, d = tokens.shape
    heads = attn.num_heads
    qkv = attn.qkv(tokens).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, d/H]
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, 1, N]
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    return weights[:, :, 0, prefix:]
