"""Long tail (counterpart of LVIS): the LIN probe trained on a long-tailed subset, tested on balanced data."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class LongtailSettings(Section):
    imbalance: float = Field(100.0, ge=1.0)  # head/tail image-count ratio
    rare: int = Field(3, ge=1)  # number of rarest classes reported as "rare"


def run(ctx, s: LongtailSettings, progress) -> dict[str, float]:
    import torch

    from siamim.eval.linear_probe import accuracy, per_class_accuracy, predict
    from siamim.eval.longtail import longtail_subset

    train, test = ctx.suite.train, ctx.suite.test
    idx, order = longtail_subset(train.labels.numpy(), s.imbalance, ctx.seed, train.num_classes)
    keep = torch.from_numpy(idx)
    probe = ctx.lin_probe(ctx.features("train", "cls", progress)[keep], train.labels[keep], progress, "probe step")
    pred = predict(probe, ctx.features("test", "cls", progress), device=ctx.device)
    per_class = per_class_accuracy(pred, test.labels, test.num_classes)
    rare = torch.from_numpy(order[-s.rare :])
    return {
        "longtail_top1": accuracy(pred, test.labels),
        "longtail_rare_top1": float(per_class[rare].nanmean()),
        "longtail_train_size": float(len(idx)),
    }


PROTOCOL = Protocol(
    name="longtail",
    order=40,
    settings=LongtailSettings,
    run=run,
    columns={
        "longtail_top1": ("LVIS AP box", "linear probe top-1 % trained on a 100:1 long tail"),
        "longtail_rare_top1": ("LVIS AP box rare", "mean top-1 % of the rarest classes"),
        "longtail_train_size": ("-", "long-tailed training images"),
    },
    summary="linear probe trained on a long-tailed subset; overall and rare-class top-1 (LVIS counterpart)",
    headline=Headline("longtail_top1", "long-tail", "AP box"),
)
