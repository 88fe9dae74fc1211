"""Dense (counterpart of COCO / ADE20k): per-pixel linear probe on frozen patch tokens of 2x2 mosaics."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class DenseSettings(Section):
    train_mosaics: int = Field(4000, ge=1)
    test_mosaics: int = Field(1000, ge=1)
    epochs: int = Field(30, ge=1)
    blr: float = Field(0.01, gt=0.0)  # AdamW, lr = blr * batch / 256


def run(ctx, s: DenseSettings, progress) -> dict[str, float]:
    from siamim.eval import dense
    from siamim.eval.representation import extract

    suite, size, e = ctx.suite, ctx.cfg.data.img_size, ctx.eval
    tr = suite.get(
        "mosaic_train",
        lambda: dense.build_mosaics(suite.train_source, s.train_mosaics, size, ctx.seed, suite.train_idx),
    )
    te = suite.get(
        "mosaic_test",
        lambda: dense.build_mosaics(suite.test_source, s.test_mosaics, size, ctx.seed + 1, suite.test_idx),
    )
    x_tr = extract(
        ctx.rep, tr.images, "tokens", e.batch_size, ctx.device, progress=progress("train mosaic tokens", "img")
    )
    x_te = extract(
        ctx.rep, te.images, "tokens", e.batch_size, ctx.device, progress=progress("test mosaic tokens", "img")
    )
    probe = dense.train_dense_probe(
        x_tr,
        tr.masks,
        tr.num_labels,
        s.epochs,
        blr=s.blr,
        seed=ctx.seed,
        device=ctx.device,
        progress=progress("probe step", unit="step"),
    )
    pred = dense.segment(probe, x_te, device=ctx.device)
    m, _ = dense.miou(dense.confusion(pred, te.masks, te.num_labels))
    return {"dense_miou": m, "dense_pixel_acc": 100.0 * (pred == te.masks).float().mean().item()}


PROTOCOL = Protocol(
    name="dense",
    order=50,
    settings=DenseSettings,
    run=run,
    columns={
        "dense_miou": ("ADE20k mIoU / COCO AP", "mosaic segmentation mIoU %, linear probe on patch tokens"),
        "dense_pixel_acc": ("-", "mosaic pixel accuracy %"),
    },
    summary="per-pixel linear probe on patch tokens of 2x2 mosaics, mIoU (COCO / ADE20k counterpart)",
    headline=Headline("dense_miou", "dense mIoU", "AP box"),
)
