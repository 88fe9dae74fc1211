import timm
import torch

from siamim.checkpoint import encoder_timm_spec, export_encoder, load_encoder
from siamim.model.siamim import SiameseIM
from siamim.train.loop import training_state
from siamim.train.optim import build_optimizer
from tests.model.helpers import one_batch


def test_gradients_reach_online_branch_only(small_cfg):
    cfg = small_cfg()
    model = SiameseIM(cfg)
    out = model(one_batch(cfg))
    assert set(out) == {"loss", "loss_pos", "loss_neg"}
    out["loss"].backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(not p.requires_grad for p in model.target.parameters())
    trainable = [(n, p) for n, p in model.online.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    # frozen by design: the patch projection, the fixed sin-cos position embedding and the final
    # encoder norm, which the official model does not apply in pretraining (identity affine)
    frozen = {n for n, p in model.online.named_parameters() if not p.requires_grad}
    assert frozen == {
        "encoder.patch_embed.proj.weight",
        "encoder.patch_embed.proj.bias",
        "encoder.pos_embed",
        "encoder.norm.weight",
        "encoder.norm.bias",
    }


def test_ema_update_matches_formula(small_cfg):
    model = SiameseIM(small_cfg())
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(torch.randn_like(p))
    tgt, src = model.target_pairs()
    before = [t.clone() for t in tgt]
    model.update_target(0.9)
    for t, b, o in zip(tgt, before, src, strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    assert len(tgt) == len(list(model.target.parameters()))


def test_frozen_patch_embedding_does_not_change(small_cfg):
    cfg = small_cfg()
    model = SiameseIM(cfg)
    opt = build_optimizer(model.online, cfg)
    for g in opt.param_groups:
        g["lr"] = 1e-2
    w = model.online.encoder.patch_embed.proj.weight.clone()
    other = model.online.encoder.blocks[0].attn.qkv.weight.clone()
    model(one_batch(cfg))["loss"].backward()
    opt.step()
    assert torch.equal(model.online.encoder.patch_embed.proj.weight, w)
    assert not torch.equal(model.online.encoder.blocks[0].attn.qkv.weight, other)


def test_train_patch_embed_option(small_cfg):
    model = SiameseIM(small_cfg("model.train_patch_embed=true"))
    assert model.online.encoder.patch_embed.proj.weight.requires_grad


def test_exported_encoder_loads_into_timm(small_cfg):
    cfg = small_cfg()
    model = SiameseIM(cfg)
    opt = build_optimizer(model.online, cfg)
    state = training_state(model, opt, 0, cfg)
    name, kwargs = encoder_timm_spec(cfg)
    vit = timm.create_model(name, pretrained=False, **kwargs)
    result = vit.load_state_dict(export_encoder(state), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    enc, _ = load_encoder(state)
    assert torch.allclose(vit.eval()(x), enc(x), atol=1e-6)
    assert vit(x).shape == (2, cfg.model.embed_dim)
