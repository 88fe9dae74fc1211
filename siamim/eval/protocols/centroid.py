"""Nearest class centroid: each test image takes the class whose mean L2-normalised frozen feature is nearest.

A parameter-free probe of how linearly clustered the classes are (no paper column): the centroid
of class ``c`` is the mean of the L2-normalised training features of ``c``; a test feature,
L2-normalised too, is assigned to the centroid at the smallest Euclidean distance.
"""

from __future__ import annotations

from typing import Literal

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class CentroidSettings(Section):
    pool: Literal["cls", "mean"] = "cls"  # which frozen feature: the cls token or the mean of the patch tokens


def nearest_centroid_predict(train_feats, train_labels, test_feats, num_classes: int):
    """long ``[M]`` predictions for ``test_feats`` ``[M, D]`` from ``train_feats`` ``[N, D]`` / long
    ``train_labels`` ``[N]``; a class without training features is never predicted."""
    import torch
    import torch.nn.functional as F

    x, q = F.normalize(train_feats.float(), dim=1), F.normalize(test_feats.float(), dim=1)
    sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, train_labels, x)
    counts = torch.bincount(train_labels, minlength=num_classes)
    centroids = sums / counts.clamp(min=1).unsqueeze(1)  # [C, D]
    dist = torch.cdist(q, centroids)  # [M, C]
    dist[:, counts == 0] = float("inf")
    return dist.argmin(dim=1)


def run(ctx, s: CentroidSettings, progress) -> dict[str, float]:
    train, test = ctx.suite.train, ctx.suite.test
    pred = nearest_centroid_predict(
        ctx.features("train", s.pool, progress), train.labels, ctx.features("test", s.pool, progress), test.num_classes
    )
    return {"centroid_top1": 100.0 * (pred == test.labels).float().mean().item()}


PROTOCOL = Protocol(
    name="centroid",
    order=15,
    settings=CentroidSettings,
    run=run,
    columns={"centroid_top1": ("- (no paper column)", "nearest class centroid top-1 %, L2-normalised features")},
    summary="nearest class centroid on frozen features (eval.centroid.pool: cls or mean)",
    headline=Headline("centroid_top1", "centroid", "LIN"),  # a frozen-feature classifier, as kNN
)
