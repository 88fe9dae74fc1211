import pytest
import torch

from siamim.model.siamim import SiameseIM
from siamim.train.optim import build_optimizer, param_groups


def release_rule(model: torch.nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """The oracle: timm's rule as the SiameseIM release calls it (no skip list): 1-D params and biases
    are not decayed, everything else (matrices, the 3-D cls and mask tokens) is; optionally tokens too."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        token = any(tok in name for tok in ("cls_token", "mask_token"))
        if param.ndim <= 1 or name.endswith(".bias") or (token and not decay_tokens):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ids(group: dict) -> list[int]:
    return [id(p) for p in group["params"]]


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model.heads=moco_like", "views.different_views=true"),
        ("model.target=pixel", "model.norm=ln"),
        ("model.train_patch_embed=true",),
    ],
)
@pytest.mark.parametrize("decay_tokens", [True, False])
def test_groups_equal_the_release_rule(small_cfg, overrides, decay_tokens):
    model = SiameseIM(small_cfg(*overrides)).online
    new, oracle = param_groups(model, 0.05, decay_tokens), release_rule(model, 0.05, decay_tokens)
    assert [g["weight_decay"] for g in new] == [0.05, 0.0]
    # The same parameters in the same order, group by group (checkpointed optimiser states index them).
    assert [ids(g) for g in new] == [ids(g) for g in oracle]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[i] for i in ids(new[0])}
    tokens = {n for n in names.values() if n.endswith(("cls_token", "mask_token"))}
    assert tokens  # the rule is exercised: the model has tokens
    assert (tokens <= decayed) == decay_tokens and (not tokens & decayed) == (not decay_tokens)


def test_row_i_decays_its_cls_and_mask_tokens(small_cfg):
    """The release decays ``cls_token`` and the predictor's ``mask_token`` (3-D), not norms or biases."""
    cfg = small_cfg()
    model = SiameseIM(cfg).online
    opt = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert {"encoder.cls_token", "predictor.mask_token"} <= decayed
    assert not any(n.endswith(".bias") or ".norm" in n for n in decayed)
    assert opt.param_groups[0]["weight_decay"] == cfg.optim.weight_decay and opt.param_groups[1]["weight_decay"] == 0


def test_optimizer_state_round_trips(small_cfg):
    """A checkpoint's optimiser state loads into a new optimiser over the same groups."""
    cfg = small_cfg()
    model = SiameseIM(cfg).online
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    old = torch.optim.AdamW(release_rule(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    old.step()
    new = build_optimizer(model, cfg)
    new.load_state_dict(old.state_dict())
    assert [g["weight_decay"] for g in new.param_groups] == [0.05, 0.0]
