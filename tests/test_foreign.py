"""siamim/foreign.py: official SiameseIM and MAE checkpoints mapped onto the timm encoder."""

from __future__ import annotations

import pytest
import torch

from siamim.checkpoint import load_encoder
from siamim.foreign import (
    MAE,
    OFFICIAL_SIAMIM,
    ForeignCheckpointError,
    detect_layout,
    heads_for,
    map_encoder,
    read_checkpoint,
)
from siamim.model.encoder import build_encoder
from tests.foreign_layouts import mae_checkpoint, official_siamim_checkpoint, reference_features

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    ("make", "layout", "final_norm"),
    [
        (official_siamim_checkpoint, OFFICIAL_SIAMIM, False),
        (mae_checkpoint, MAE, True),
        (lambda: mae_checkpoint(encoder_only=True), MAE, True),
    ],
    ids=["siamim", "mae", "mae-encoder-only"],
)
def test_release_checkpoints_map_with_no_missing_or_unexpected_keys_and_the_same_outputs(
    tmp_path, make, layout, final_norm
):
    ckpt = make()
    torch.save(ckpt, tmp_path / "release.pth")
    assert detect_layout(ckpt["model"]) == layout
    state = read_checkpoint(tmp_path / "release.pth")
    assert state["kind"] == "encoder" and state["source_layout"] == layout
    encoder, cfg = load_encoder(state)  # strict=True inside: no missing, no unexpected key
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.patch_size, cfg.data.img_size) == (128, 2, 4, 16)
    assert cfg.model.num_heads == 2 and cfg.model.mlp_ratio == 4.0
    fresh = build_encoder(cfg.model, cfg.data.img_size)
    assert set(fresh.state_dict()) == set(state["model"])
    with torch.no_grad():
        got = encoder.forward_features(X)
    want = reference_features(ckpt["model"], X, heads=2, final_norm=final_norm)
    assert got.shape == (2, 17, 128)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_the_siamim_encoder_is_the_online_one_not_the_ema_target():
    ckpt = official_siamim_checkpoint()
    weights = map_encoder(ckpt["model"], OFFICIAL_SIAMIM)
    assert torch.equal(weights["blocks.1.mlp.fc2.weight"], ckpt["model"]["blocks.1.mlp.fc2.weight"])
    assert not torch.equal(weights["blocks.1.mlp.fc2.weight"], ckpt["model"]["mm_blocks.1.mlp.fc2.weight"])
    assert torch.equal(weights["norm.weight"], torch.ones(128)) and torch.equal(weights["norm.bias"], torch.zeros(128))


def test_leftover_or_missing_keys_are_errors_that_name_them():
    model = dict(official_siamim_checkpoint()["model"])
    model["head.weight"] = torch.zeros(10, 128)
    with pytest.raises(ForeignCheckpointError, match="head.weight"):
        map_encoder(model, OFFICIAL_SIAMIM)
    model = dict(mae_checkpoint()["model"])
    del model["blocks.1.attn.proj.bias"]
    with pytest.raises(ForeignCheckpointError, match=r"missing keys \['blocks.1.attn.proj.bias'\]"):
        map_encoder(model, MAE)
    model = dict(mae_checkpoint()["model"])
    model["blocks.0.ls1.gamma"] = torch.ones(128)
    with pytest.raises(ForeignCheckpointError, match="layer-scale"):
        map_encoder(model, MAE)


def test_a_file_of_neither_layout_is_named(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(ForeignCheckpointError, match="neither a siamim checkpoint"):
        read_checkpoint(tmp_path / "other.pth")


def test_head_counts_follow_the_release_names_then_the_standard_widths():
    assert heads_for(768, "sim_vit_base_patch16") == 12 and heads_for(1280, "mae_vit_huge_patch14") == 16
    assert heads_for(384) == 6 and heads_for(1280) == 16 and heads_for(128) == 2
