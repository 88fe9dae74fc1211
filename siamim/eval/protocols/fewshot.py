"""1%: logistic regression on frozen cls features of 1% of the training labels (MSN protocol), over seeds."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class FewshotSettings(Section):
    fraction: float = Field(0.01, gt=0.0, le=1.0)  # 0.01: 60 images per class on Fashion-MNIST
    seeds: int = Field(5, ge=1)  # number of seeded subsets averaged
    lambd: float = Field(1e-4, ge=0.0)  # L2 weight of the logistic regression (MSN: 0.0025 for 1000 classes)


def run(ctx, s: FewshotSettings, progress) -> dict[str, float]:
    import numpy as np
    import torch

    from siamim.eval.fewshot import fewshot_accuracy, seed_statistics
    from siamim.eval.imageset import load_image_set
    from siamim.eval.representation import extract
    from siamim.eval.subsets import class_balanced_subset

    suite, e = ctx.suite, ctx.eval
    subsets = [class_balanced_subset(suite.train_source.labels, s.fraction, ctx.seed + k) for k in range(s.seeds)]
    union = np.unique(np.concatenate(subsets))
    images = load_image_set(suite.train_source, ctx.cfg.data.img_size, union)
    feats = extract(
        ctx.rep, images, "cls", e.batch_size, ctx.device, progress=progress("labelled-subset features", unit="img")
    )
    test = ctx.features("test", "cls", progress)
    accs = []
    seeds_done = progress("seeds", unit="seed")
    for k, sub in enumerate(subsets):
        rows = torch.from_numpy(np.searchsorted(union, sub))
        accs.append(
            fewshot_accuracy(feats[rows], images.labels[rows], test, suite.test.labels, suite.test.num_classes, s.lambd)
        )
        seeds_done(k + 1, len(subsets))
    stats = seed_statistics(accs)
    return {
        "fewshot_top1": stats["mean"],
        "fewshot_top1_std": stats["std"],
        "fewshot_per_class": float(len(subsets[0]) / suite.test.num_classes),
    }


PROTOCOL = Protocol(
    name="fewshot",
    order=30,
    settings=FewshotSettings,
    run=run,
    columns={
        "fewshot_top1": ("1% FT", "1% labels, logistic regression top-1 %, mean over seeds"),
        "fewshot_top1_std": ("1% FT (spread)", "std over seeds, points"),
        "fewshot_per_class": ("-", "labelled images per class"),
    },
    summary="logistic regression on 1% of the labels, mean and std over seeded subsets (MSN)",
    headline=Headline("fewshot_top1", "1%", "LIN"),
)
