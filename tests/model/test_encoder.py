import timm
import torch
import torch.nn.functional as F

from siamim.checkpoint import encoder_timm_spec, export_encoder
from siamim.model.encoder import encode_visible
from siamim.model.siamim import SiameseIM
from siamim.train.loop import training_state
from siamim.train.optim import build_optimizer
from siamim.train.step import TrainStep
from tests.model.helpers import one_batch


def trained_model(cfg):
    """The tiny model after 2 optimiser steps (weights away from their initialisation)."""
    torch.manual_seed(cfg.train.seed)
    model = SiameseIM(cfg).train()
    optimizer = build_optimizer(model.online, cfg)
    step = TrainStep(model, optimizer, None, cfg.optim.clip_grad)
    batch = one_batch(cfg)
    for _ in range(2):
        step(batch, 1e-2, 0.99)
    return model.eval(), optimizer


def test_encode_visible_with_nothing_masked_is_timm_forward_features(small_cfg):
    """All patches visible, ``encode_visible`` is timm's ``forward_features`` of the exported encoder.

    Feature-target rows never apply the final LayerNorm in pretraining (docs/method.md, "The exported
    encoder's final norm"): it stays weight 1 / bias 0, so ``forward_features`` = LayerNorm without
    affine of ``encode_visible``'s last-block tokens, and equal with ``final_norm=True``.
    """
    cfg = small_cfg()
    model, optimizer = trained_model(cfg)
    name, kwargs = encoder_timm_spec(cfg)
    vit = timm.create_model(name, pretrained=False, **kwargs).eval()
    vit.load_state_dict(export_encoder(training_state(model, optimizer, 2, cfg)), strict=True)
    x = torch.randn(3, 3, cfg.data.img_size, cfg.data.img_size, generator=torch.Generator().manual_seed(0))
    all_visible = torch.arange(cfg.grid_size**2).expand(3, -1)  # [B, L]: the full mask, nothing dropped
    enc = model.online.encoder
    with torch.no_grad():
        expected = vit.forward_features(x)  # [B, 1 + L, D]
        last_block = encode_visible(enc, x, all_visible)
        assert torch.equal(last_block, encode_visible(enc, x, None))  # ids_keep=None means the same
        normed = encode_visible(enc, x, all_visible, final_norm=True)
    assert expected.shape == (3, 1 + cfg.grid_size**2, cfg.model.embed_dim)
    # Measured max abs difference: 0 with final_norm (timm's own norm module, frozen at 1 / 0), 3.3e-6 for
    # the functional LayerNorm (another kernel) on values of order 1. Tolerance 1e-5: 3x that, and 1000x
    # below the 1e-2 by which the un-normed tokens must differ.
    assert torch.equal(normed, expected)
    assert torch.allclose(F.layer_norm(last_block, (cfg.model.embed_dim,)), expected, atol=1e-5)
    assert not torch.allclose(last_block, expected, atol=1e-2)  # the final norm is applied: the test can fail
    # The trained weights reached timm (not a fresh init that would also match itself).
    fresh = timm.create_model(name, pretrained=False, **kwargs).eval()
    assert not torch.allclose(fresh.forward_features(x), expected, atol=1e-2)
