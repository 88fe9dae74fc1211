"""The MAE baseline preset (configs/baselines/mae.yaml): MAE's own recipe, not row (a)."""

import timm
import torch

from siamim.checkpoint import encoder_timm_spec, export_encoder
from siamim.config import load_config
from siamim.model.siamim import SiameseIM
from siamim.train.loop import pretrain
from tests.conftest import SMALL
from tests.model.helpers import one_batch

# SMALL's decoder sizes, but the preset's structure: no projector blocks, every decoder block over the grid.
MAE_SMALL = [o for o in SMALL if not o.startswith(("model.projector_depth", "model.predictor_depth"))]


def mae_cfg(tmp_path, *overrides):
    return load_config("baselines/mae", [*MAE_SMALL, f"train.output_dir={tmp_path}/mae", *overrides])


def test_the_preset_is_maes_recipe(tmp_path):
    cfg = mae_cfg(tmp_path)
    assert cfg.mask.type == "random" and cfg.num_masked == round(0.75 * cfg.grid_size**2)
    assert cfg.model.target == "pixel" and cfg.model.query_pos == "grid" and cfg.model.train_patch_embed
    assert cfg.model.projector_depth == 0 and not cfg.views.different_views and cfg.loss.type == "l2"
    model = SiameseIM(cfg)
    online = model.online
    assert model.target is None  # pixel target: no EMA branch
    assert len(online.projector.blocks) == 0  # decoder_embed is one linear layer
    assert online.predictor.rel_pos is None  # no relative-position query path
    assert online.encoder.patch_embed.proj.weight.requires_grad  # MAE trains its patch embedding


def test_every_decoder_block_sees_mask_tokens_at_the_masked_grid_positions(tmp_path):
    """Our decoder equals MAE's: the full grid in order, visible tokens and mask tokens, + fixed sin-cos positions."""
    cfg = mae_cfg(tmp_path, "model.predictor_depth=2")
    torch.manual_seed(0)
    model = SiameseIM(cfg).eval()
    batch = one_batch(cfg)
    online, pred = model.online, model.online.predictor
    with torch.no_grad():
        ours = online(batch["view1"], batch["mask"], batch["ids_keep"], batch["geometry"], batch["ids_masked"])
        tokens = online.projector(online.encoder.norm(online.encoder.blocks(_encoder_input(online, batch))))
        b, length = batch["mask"].shape
        full = pred.mask_token.expand(b, 1 + length, -1).clone()  # [B, 1+L, D] in grid order
        full[:, 0] = tokens[:, 0]
        full.scatter_(1, 1 + batch["ids_keep"].unsqueeze(-1).expand(-1, -1, full.shape[-1]), tokens[:, 1:])
        out = pred.head(pred.norm(pred.blocks(full + pred.pos_embed)))  # MAE: decoder_pos_embed over the grid
        want = torch.gather(out[:, 1:], 1, batch["ids_masked"].unsqueeze(-1).expand(-1, -1, out.shape[-1]))
    assert ours.shape == want.shape == (b, length - batch["ids_keep"].shape[1], 3 * cfg.model.patch_size**2)
    assert torch.allclose(ours, want, atol=1e-5)


def _encoder_input(online, batch):
    enc = online.encoder
    x = enc.patch_embed(batch["view1"]) + enc.pos_embed[:, 1:]
    x = torch.gather(x, 1, batch["ids_keep"].unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


def test_the_preset_trains_with_a_falling_loss_and_exports(tmp_path):
    cfg = mae_cfg(tmp_path, "train.max_steps=30", "optim.warmup_epochs=0.002")
    losses = []
    result = pretrain(
        cfg, reporter=lambda m: losses.append(m["loss"]), checkpoint_saver=lambda s, k: None, verbose=False
    )
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    name, kwargs = encoder_timm_spec(cfg)
    enc = timm.create_model(name, **kwargs)
    enc.load_state_dict(export_encoder(result["state"]), strict=True)
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    assert torch.allclose(enc.forward_features(x), result["encoder"].forward_features(x), atol=1e-5)
