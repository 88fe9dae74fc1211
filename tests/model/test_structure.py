"""Row (i) has the official SiameseIM structure where it changes results (docs/method.md, "Architecture")."""

import math

import torch
from torch import nn

from siamim.model.siamim import SiameseIM
from tests.model.helpers import one_batch


def _capture(module: nn.Module, store: dict, key: str, inputs: bool):
    def hook(_mod, args, output):
        store[key] = (args[0] if inputs else output).detach().clone()

    return module.register_forward_hook(hook)


def test_no_norm_between_encoder_and_projector_nor_before_the_prediction_layer(small_cfg):
    cfg = small_cfg()
    model = SiameseIM(cfg)
    seen: dict = {}
    online, target = model.online, model.target
    hooks = [
        _capture(online.encoder.blocks[-1], seen, "online_blocks_out", inputs=False),
        _capture(online.projector.linear, seen, "online_proj_in", inputs=True),
        _capture(target.encoder.blocks[-1], seen, "target_blocks_out", inputs=False),
        _capture(target.projector.linear, seen, "target_proj_in", inputs=True),
        _capture(online.predictor.blocks[-1], seen, "pred_blocks_out", inputs=False),
        _capture(online.predictor.head, seen, "pred_head_in", inputs=True),
    ]
    model(one_batch(cfg))
    for h in hooks:
        h.remove()
    assert torch.equal(seen["online_blocks_out"], seen["online_proj_in"])
    assert torch.equal(seen["target_blocks_out"], seen["target_proj_in"])
    assert torch.equal(seen["pred_blocks_out"], seen["pred_head_in"])
    # The final encoder norm exists (timm loads it) but holds the identity affine and is frozen.
    norm = online.encoder.norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
        norm.bias, torch.zeros_like(norm.bias)
    )


def test_ema_tracks_exactly_encoder_and_projector(small_cfg):
    model = SiameseIM(small_cfg())
    tracked = {n for n, _ in model.target.named_parameters()}
    expected = {n for n, _ in model.online.named_parameters() if n.split(".")[0] in ("encoder", "projector")}
    assert tracked == expected
    assert not any(n.startswith("predictor") for n in tracked)
    tgt, src = model.target_pairs()
    assert len(tgt) == len(expected) and all(t.shape == o.shape for t, o in zip(tgt, src, strict=True))


def test_official_initialisation(small_cfg):
    torch.manual_seed(0)
    model = SiameseIM(small_cfg())
    linears = [(n, m) for n, m in model.online.named_modules() if isinstance(m, nn.Linear)]
    assert any(n.startswith("encoder.blocks") for n, _ in linears)  # the encoder is included
    for name, lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier-uniform bound
        w = lin.weight.detach()
        assert w.abs().max() <= bound + 1e-6, name
        # uniform on [-b, b] has std b / sqrt(3); timm's trunc-normal(0.02) would miss this by far
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), name
        assert lin.bias is None or torch.count_nonzero(lin.bias) == 0, name
    norms = [(n, m) for n, m in model.online.named_modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))]
    kinds = [nn.LayerNorm, nn.BatchNorm1d]  # the encoder's LayerNorms, the projector's and predictor's BatchNorms
    assert [k for k in kinds if any(isinstance(m, k) for _, m in norms)] == kinds, norms
    for name, norm in norms:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0), name
    for token in (model.online.encoder.cls_token, model.online.predictor.mask_token):
        assert 0.005 < token.std().item() < 0.05


def test_batchnorm_eps_and_patch_bias_follow_the_release(small_cfg):
    """The release's BatchNorm keeps PyTorch's eps 1e-5; its frozen patch-projection bias keeps Conv2d's init."""
    torch.manual_seed(0)
    model = SiameseIM(small_cfg())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(m.eps == 1e-5 for m in bns)
    conv = model.online.encoder.patch_embed.proj
    bound = 1 / math.sqrt(conv.weight[0].numel())  # Conv2d's default bias: uniform in [-1/sqrt(fan_in), ...]
    assert conv.bias.abs().max() <= bound and conv.bias.std() > 0.3 * bound
    assert not conv.bias.requires_grad
    assert torch.equal(model.target.encoder.patch_embed.proj.bias, conv.bias)


def test_every_attention_uses_the_fused_sdpa_kernel(small_cfg):
    """timm's Attention takes F.scaled_dot_product_attention when ``fused_attn`` is set."""
    from timm.models.vision_transformer import Attention

    model = SiameseIM(small_cfg())
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert attns and all(a.fused_attn for a in attns)
