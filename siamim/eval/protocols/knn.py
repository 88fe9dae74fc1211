"""kNN: weighted k-nearest-neighbour top-1 on frozen cls features (InstDisc/DINO monitor; no paper column)."""

from __future__ import annotations

from pydantic import Field, model_validator

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import ConfigError, Section


class KnnSettings(Section):
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0.0)  # vote weight exp(cosine / temperature)
    train_subset: int | None = None  # memory bank: class-balanced seeded subset of N training images; None: all
    test_subset: int | None = Field(None, ge=1)  # queries: same rule on the test images; None: all

    @model_validator(mode="after")
    def _bank_holds_k(self) -> KnnSettings:
        if self.train_subset is not None and self.train_subset < self.k:
            raise ConfigError(
                f"eval.knn.train_subset={self.train_subset} is invalid: must be null or at least eval.knn.k={self.k}"
            )
        return self


def run(ctx, s: KnnSettings, progress) -> dict[str, float]:
    import torch

    from siamim.eval.knn import knn_top1

    def features(split, rows):
        return ctx.features(split, "cls", progress)[torch.from_numpy(rows)]

    train, test = ctx.suite.train, ctx.suite.test
    top1 = knn_top1(features, train.labels.numpy(), test.labels.numpy(), test.num_classes, s, ctx.seed)
    return {"knn_top1": top1}


PROTOCOL = Protocol(
    name="knn",
    order=10,
    settings=KnnSettings,
    run=run,
    columns={"knn_top1": ("kNN (monitor; no paper column)", "cosine k-NN top-1 %, weighted votes, cls")},
    summary="weighted kNN on frozen cls features (also the pretraining job's final metric)",
    headline=Headline("knn_top1", "kNN", "LIN"),
)
