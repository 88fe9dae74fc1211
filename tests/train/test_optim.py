import pytest
import torch

from siamim.model.siamim import SiameseIM
from siamim.train.optim import build_optimizer, param_groups


def old_rule(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The hand-written grouping this module had before timm's helper (kept here as the oracle)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(tok in name for tok in ("cls_token", "mask_token", "pos_embed")):
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
def test_groups_equal_the_old_rule(small_cfg, overrides):
    model = SiameseIM(small_cfg(*overrides)).online
    new, old = param_groups(model, 0.05), old_rule(model, 0.05)
    assert [g["weight_decay"] for g in new] == [0.05, 0.0]
    # The same parameters in the same order, group by group (checkpointed optimiser states index them).
    assert [ids(g) for g in new] == [ids(g) for g in old]
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[i] for i in ids(new[1])}
    # The rule is exercised: tokens (3-D) are excluded by name, matrices are decayed.
    assert any("token" in n and dict(model.named_parameters())[n].ndim > 1 for n in no_decay)
    assert all(p.ndim > 1 for p in new[0]["params"]) and new[0]["params"]


def test_optimizer_state_round_trips_with_the_old_groups(small_cfg):
    """A checkpoint's optimiser state (built with the old groups) loads into the new optimiser."""
    cfg = small_cfg()
    model = SiameseIM(cfg).online
    for p in model.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    old = torch.optim.AdamW(old_rule(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    old.step()
    new = build_optimizer(model, cfg)
    new.load_state_dict(old.state_dict())
    assert [g["weight_decay"] for g in new.param_groups] == [0.05, 0.0]
