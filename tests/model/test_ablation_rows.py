"""Every ablation preset (configs/ablation/<row>.yaml) trains, checkpoints and exports."""

import math

import pytest
import timm
import torch

from siamim.checkpoint import encoder_timm_spec, load_checkpoint, load_encoder
from siamim.config import load_config
from siamim.train.loop import pretrain
from tests.conftest import SMALL

STEPS = 24


@pytest.mark.parametrize("row", list("abcdefghijk"))
def test_row_trains_with_falling_loss_and_exports(row, tmp_path):
    # 64 images at batch 32: the same two batches 12 times, so the loss must fall if the row learns.
    cfg = load_config(
        f"ablation/{row}",
        [
            *SMALL,
            "data.train_subset=64",
            f"train.max_steps={STEPS}",
            f"train.epochs={STEPS // 2}",
            "optim.warmup_epochs=1",
            "optim.blr=1e-3",
            f"train.output_dir={tmp_path}",
        ],
    )
    losses = []
    pretrain(cfg, reporter=lambda m: losses.append(m["loss"]), verbose=False)
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.9 * first, (row, losses)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == STEPS and state["config"]["model"]["heads"] == cfg.model.heads
    encoder, stored = load_encoder(state)
    name, kwargs = encoder_timm_spec(stored)
    vit = timm.create_model(name, pretrained=False, **kwargs)
    vit.load_state_dict(encoder.state_dict(), strict=True)
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    assert torch.allclose(vit.eval()(x), encoder(x), atol=1e-6)
