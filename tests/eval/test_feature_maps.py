"""siamim/eval/feature_maps.py: PCA maps, the correspondence score against the geometry, cls attention."""

from __future__ import annotations

import math

import torch

from siamim.data.geometry import relative_geometry
from siamim.data.views import make_view_pair
from siamim.eval.feature_maps import (
    cls_attention,
    correspondence,
    correspondence_score,
    pca_maps,
    same_position_score,
)
from siamim.model.encoder import build_encoder
from tests.data.test_geometry import PATCH, SIZE, H, W, coordinate_image
from tests.eval.helpers import cfg

GRID = SIZE // PATCH


def _pairs(count: int, seed: int = 0):
    """View pairs of the coordinate-encoding image (channel 0 = row, 1 = column), no colour change."""
    image = coordinate_image().round().clamp(0, 255).to(torch.uint8)
    gen = torch.Generator().manual_seed(seed)
    pairs = [make_view_pair(image, SIZE, gen, crop_min=0.3, color_aug=False) for _ in range(count)]
    geometry = relative_geometry(
        torch.tensor([p.box1 for p in pairs], dtype=torch.float32),
        torch.tensor([p.box2 for p in pairs], dtype=torch.float32),
        torch.tensor([p.flip1 for p in pairs]),
        torch.tensor([p.flip2 for p in pairs]),
        torch.full((count,), float(W)),
    )
    return torch.stack([p.view1 for p in pairs]), torch.stack([p.view2 for p in pairs]), geometry


def _position_features(views: torch.Tensor) -> torch.Tensor:
    """The oracle: each patch's mean encoded (row, col) of the source image, as multi-frequency sin-cos
    ``[B, L, 4F]`` (cosine similarity peaks where the positions agree). Built from the pixels only."""
    coords = views[:, :2].float().unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).mean(dim=(-1, -2))  # [B, 2, G, G]
    coords = coords.flatten(2).transpose(1, 2)  # [B, L, 2]
    freqs = torch.tensor([2 * math.pi / (2 * H) * 2**k for k in range(4)])  # periods 2H .. H/4: one peak
    angles = coords[..., None] * freqs  # [B, L, 2, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(2)


def test_position_oracle_scores_about_one_and_random_features_score_chance():
    v1, v2, geometry = _pairs(48)
    oracle = correspondence(_position_features(v1), _position_features(v2), geometry, GRID)
    score, chance, counted = correspondence_score(oracle)
    assert counted > 48 * 20 and score > 0.97, score
    assert same_position_score(oracle) < 0.6  # the crops move content: position alone is not enough
    gen = torch.Generator().manual_seed(1)
    noise = correspondence(
        torch.randn(48, GRID**2, 32, generator=gen), torch.randn(48, GRID**2, 32, generator=gen), geometry, GRID
    )
    rscore, rchance, _ = correspondence_score(noise)
    assert rchance == chance and 0.02 < chance < 0.1  # ~3-4 of 64 patch centres lie within one patch
    assert abs(rscore - chance) < 0.03, (rscore, chance)


def test_a_wrong_geometry_breaks_the_oracle():
    v1, v2, geometry = _pairs(16)
    wrong = geometry.clone()
    wrong[:, 4] = 1 - wrong[:, 4]  # relative flip inverted
    wrong[:, 1] = wrong[:, 5] - wrong[:, 1] - wrong[:, 3]  # the column offset it would need is not there
    score, _, _ = correspondence_score(correspondence(_position_features(v1), _position_features(v2), wrong, GRID))
    assert score < 0.6


def test_pca_maps_shape_range_and_determinism():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 49, 24, generator=gen)
    feats[:, [0, 6, 42, 48]] += 3.0  # the corners differ from the rest: component 1 separates them
    rgb, fg = pca_maps(feats, 7)
    assert rgb.shape == (5, 7, 7, 3) and fg.shape == (5, 7, 7) and fg.dtype == torch.bool
    assert rgb.min() >= 0 and rgb.max() <= 1 and (rgb[~fg] == 0).all()
    assert not fg[:, 0, 0].any() and fg.float().mean() > 0.3  # the corners (border) are background
    again, fg2 = pca_maps(feats.clone(), 7)
    assert torch.equal(rgb, again) and torch.equal(fg, fg2)
    order = torch.tensor([3, 0, 4, 1, 2])  # the fit is joint: reordering the images reorders the maps, signs kept
    shuffled, _ = pca_maps(feats[order], 7)
    torch.testing.assert_close(shuffled, rgb[order], atol=1e-5, rtol=1e-5)


def test_cls_attention_per_head_matches_timm_attention():
    c = cfg()
    torch.manual_seed(0)
    enc = build_encoder(c.model, c.data.img_size).eval()
    x = torch.randn(2, 3, 32, 32)
    attn = cls_attention(enc, x)
    assert attn.shape == (2, c.model.num_heads, 64) and (attn >= 0).all()
    # the same weights from timm's own (non-fused) attention path
    seen = {}
    last = enc.blocks[-1].attn
    last.fused_attn = False
    last.attn_drop.register_forward_hook(lambda m, a, out: seen.update(w=out))
    with torch.no_grad():
        enc.forward_features(x)
    torch.testing.assert_close(attn, seen["w"][:, :, 0, 1:])
