"""FT: end-to-end fine-tuning, MAE recipe with timm's parts, on an epoch budget."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class FtSettings(Section):
    epochs: float = Field(10.0, gt=0.0)  # epoch budget (fractions allowed)
    batch_size: int = Field(256, ge=2)  # Mixup needs an even batch of two at least
    blr: float = Field(5e-4, gt=0.0)  # lr = blr * batch / 256
    min_lr: float = Field(1e-6, ge=0.0)  # end of the cosine
    layer_decay: float = Field(0.65, gt=0.0, le=1.0)  # 1: no decay
    weight_decay: float = Field(0.05, ge=0.0)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)  # stochastic depth, linear over the blocks up to this
    smoothing: float = Field(0.1, ge=0.0, lt=1.0)  # label smoothing
    mixup: float = Field(0.8, ge=0.0)  # mixup alpha (0: off)
    cutmix: float = Field(1.0, ge=0.0)  # cutmix alpha (0: off)
    warmup_epochs: float = Field(1.0, ge=0.0)


def run(ctx, s: FtSettings, progress) -> dict[str, float]:
    from siamim.eval.finetune import finetune

    res = finetune(
        ctx.rep,
        ctx.suite.train,
        ctx.suite.test,
        ctx.cfg.model,
        **s.model_dump(),
        seed=ctx.seed,
        device=ctx.device,
        progress=progress("epoch", unit="epoch"),
    )
    ctx.shared["ft_model"] = res.model
    return {"ft_top1": res.accuracy, "ft_steps": float(res.steps)}


PROTOCOL = Protocol(
    name="ft",
    order=60,
    settings=FtSettings,
    run=run,
    columns={
        "ft_top1": ("FT", "fine-tuned top-1 % (pixels: linear classifier, same budget)"),
        "ft_steps": ("-", "optimiser steps"),
    },
    summary="end-to-end fine-tuning (MAE recipe: layer decay, drop path, mixup/cutmix, smoothing)",
    headline=Headline("ft_top1", "FT", "FT"),
)
