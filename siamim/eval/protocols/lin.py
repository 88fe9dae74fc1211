"""LIN: linear probe on frozen features, MAE recipe (BN w/o affine + linear, LARS, warm-up + cosine)."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class LinSettings(Section):
    """The LIN recipe (also the probe of the long-tail and robustness protocols: ``Context.lin_probe``)."""

    steps: int = Field(2000, ge=1)  # optimiser steps, whatever the training-set size
    batch_size: int = Field(1024, ge=1)
    blr: float = Field(1.6, gt=0.0)  # lr = blr * batch / 256 = 6.4 at batch 1024: MAE's LARS step
    warmup_steps: int = Field(200, ge=0)


def run(ctx, s: LinSettings, progress) -> dict[str, float]:
    from siamim.eval.linear_probe import accuracy, predict

    train, test, out = ctx.suite.train, ctx.suite.test, {}
    for pool, key in (("cls", "lin_top1"), ("mean", "lin_mean_top1")):
        probe = ctx.lin_probe(ctx.features("train", pool, progress), train.labels, progress, f"probe ({pool}) step")
        out[key] = accuracy(predict(probe, ctx.features("test", pool, progress), device=ctx.device), test.labels)
        if pool == "cls":
            ctx.shared["lin_probe"] = probe
    return out


PROTOCOL = Protocol(
    name="lin",
    order=20,
    settings=LinSettings,
    run=run,
    columns={
        "lin_top1": ("LIN", "linear probe top-1 %, cls token (BN w/o affine + linear, LARS)"),
        "lin_mean_top1": ("LIN (mean-pooled)", "linear probe top-1 %, mean of patch tokens"),
    },
    summary="linear probe on frozen cls and mean-pooled features (MAE recipe)",
    headline=Headline("lin_top1", "LIN", "LIN"),
)
