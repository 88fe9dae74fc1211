"""train.init_from: pretraining starts from an official SiameseIM / MAE release's encoder (or one of ours)."""

from __future__ import annotations

import pytest
import torch

from siamim.foreign import OFFICIAL_SIAMIM, map_encoder
from siamim.model.siamim import SiameseIM
from siamim.timm_export import save_timm_encoder
from siamim.train.init_from import InitFromError, init_encoder_from
from siamim.train.loop import pretrain
from tests.foreign_layouts import mae_checkpoint, official_siamim_checkpoint


def test_pretraining_starts_from_the_official_encoder(small_cfg, tmp_path):
    ckpt = official_siamim_checkpoint(dim=64, depth=2, patch=4, img=28)
    torch.save(ckpt, tmp_path / "sim_release.pth")
    want = map_encoder(ckpt["model"], OFFICIAL_SIAMIM)
    # One step: the lr warms up from 0 at step 0, so the step leaves the weights where init_from put them.
    cfg = small_cfg(
        "train.max_steps=1",
        "data.train_subset=64",
        "optim.warmup_epochs=1",
        f"train.init_from={tmp_path}/sim_release.pth",
    )
    result = pretrain(cfg, verbose=False)
    online = result["encoder"].state_dict()
    target = result["state"]["model"]
    for key, value in want.items():
        assert torch.equal(online[key], value), key
        # the EMA copy starts there too (one EMA update of equal tensors: m*a + (1-m)*a, exact up to rounding)
        torch.testing.assert_close(target[f"target.encoder.{key}"], value, atol=1e-7, rtol=1e-6)
    fresh = pretrain(small_cfg("train.max_steps=1", "data.train_subset=64"), verbose=False)["encoder"].state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], want["blocks.0.attn.qkv.weight"])


def test_mae_and_our_own_exports_initialise_both_encoders(small_cfg, tmp_path):
    cfg = small_cfg()
    torch.save(mae_checkpoint(dim=64, depth=2, patch=4, img=28), tmp_path / "mae.pth")
    model = SiameseIM(cfg)
    assert init_encoder_from(model, cfg, str(tmp_path / "mae.pth"))["layout"] == "mae"
    assert torch.equal(model.online.encoder.norm.weight, model.target.encoder.norm.weight)
    state = {"format": 1, "step": 3, "config": cfg.model_dump(), "model": {}}
    state["model"] = {f"online.encoder.{k}": v for k, v in SiameseIM(cfg).online.encoder.state_dict().items()}
    folder = save_timm_encoder(tmp_path / "ours", state)
    other = SiameseIM(cfg)
    assert init_encoder_from(other, cfg, str(folder)) == {"layout": "siamim", "step": 3}
    for key, value in state["model"].items():
        assert torch.equal(other.state_dict()[key], value), key


def test_an_encoder_of_another_shape_names_the_keys_to_set(small_cfg, tmp_path):
    torch.save(official_siamim_checkpoint(dim=128, depth=3, patch=4, img=16), tmp_path / "big.pth")
    cfg = small_cfg()
    with pytest.raises(InitFromError, match="set data.img_size=16 model.embed_dim=128 model.depth=3"):
        init_encoder_from(SiameseIM(cfg), cfg, str(tmp_path / "big.pth"))
