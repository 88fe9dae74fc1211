import pytest
import torch
from timm.layers import DropPath

from siamim.eval.baselines import baseline_representation
from siamim.eval.finetune import augment, build_classifier, finetune, layer_decay_groups
from siamim.eval.protocols.ft import FtSettings
from tests.eval.helpers import cfg, chance, real_set


def test_augment_crops_and_flips_without_changing_content_scale():
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    same = augment(x, g, pad=0)
    for i in range(6):  # pad 0: each image is either itself or its mirror
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1))
    y = augment(x, torch.Generator().manual_seed(1), pad=2)
    assert y.shape == x.shape


def test_classifier_is_timm_model_with_drop_path_the_encoder_weights_and_a_fresh_head():
    c = cfg()
    rep = baseline_representation("random", c)
    model = build_classifier(rep, 10, c.model, 32, drop_path=0.2)
    assert model.head.out_features == 10 and rep.encoder.head is not model.head
    rates = [blk.drop_path1.drop_prob if isinstance(blk.drop_path1, DropPath) else 0.0 for blk in model.blocks]
    n = len(model.blocks)
    assert rates == pytest.approx([0.2 * i / (n - 1) for i in range(n)])  # linear 0 .. drop_path
    encoder = rep.encoder.state_dict()
    assert all(torch.equal(v, encoder[k]) for k, v in model.state_dict().items() if not k.startswith("head."))
    assert not model.pos_embed.requires_grad and model.patch_embed.proj.weight.requires_grad
    x = real_set("test", 8).batch(0, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), rep.encoder.forward_features(x))


def _mae_param_groups_lrd(model, weight_decay, no_weight_decay_list, layer_decay):
    """MAE's util/lr_decay.py (param_groups_lrd + get_layer_id_for_vit), per parameter: the oracle."""
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim == 1 or name in no_weight_decay_list else weight_decay
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks"):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        out[name] = (scales[layer], decay)
    return out


def test_layer_decay_groups_are_maes_recipe_parameter_by_parameter():
    c = cfg("model.depth=3")
    model = build_classifier(baseline_representation("random", c), 10, c.model, 32, drop_path=0.1)
    groups = layer_decay_groups(model, weight_decay=0.07, layer_decay=0.6)
    ours = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    mae = _mae_param_groups_lrd(model, 0.07, {"pos_embed", "cls_token", "dist_token"}, 0.6)
    ours = {names[i]: v for i, v in ours.items()}
    assert ours.keys() == mae.keys()
    for name, (scale, decay) in mae.items():
        assert ours[name] == (pytest.approx(scale), decay), name
    assert len({v[0] for v in mae.values()}) == 3 + 2  # patch embed / 3 blocks / norm + head


def test_finetune_runs_within_its_budget_and_pixels_beat_random_init():
    c = cfg()
    train, test = real_set("train", 1000), real_set("test", 300)
    s = FtSettings(epochs=3, batch_size=64, blr=1e-3, warmup_epochs=0.5)  # the rest: eval.ft's defaults
    pixels = finetune(baseline_representation("pixels", c), train, test, c.model, **s.model_dump())
    assert pixels.steps == 3 * (1000 // 64) and len(pixels.losses) == 3
    short = finetune(
        baseline_representation("random", c),
        train,
        test,
        c.model,
        **FtSettings(epochs=0.5, batch_size=64, warmup_epochs=0.1).model_dump(),
    )
    assert short.steps == round(0.5 * (1000 // 64)) and all(torch.isfinite(torch.tensor(short.losses)))
    assert 0.0 <= short.accuracy <= 100.0 and short.accuracy < pixels.accuracy
    assert pixels.accuracy > chance() + 40.0, pixels.accuracy  # 5x chance (measured 60-64 at this budget)
