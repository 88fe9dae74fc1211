"""Section ``views``: the device view path at 224 px from ImageNet-sized sources, and the step it feeds.

1. Pairs/s of :func:`siamim.data.device_views.render_views` on the device (full recipe, and crops alone),
   through ``benchmarks/views.py``'s timing on synthetic uint8 sources that script makes.
2. Our training step fed three ways: synthetic tensors already on the device (no data path), the real
   loader (``build_loader(..., on_device=True)``: DataLoader workers draw view parameters and masks, the
   views are rendered on the device by ``prepare_batch``), and the ratio: below 1 the GPU waits for data.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from benchmarks import throughput
from benchmarks import views as views_bench
from benchmarks.kit.record import Record
from siamim.config import load_config
from siamim.data.pipeline import build_loader, prepare_batch
from siamim.data.sources import IMAGENET_MEAN, IMAGENET_STD, ArraySource
from siamim.model.siamim import SiameseIM
from siamim.train.loop import autocast_dtype
from siamim.train.optim import build_optimizer
from siamim.train.step import TrainStep


def synthetic_source(count: int, height: int, width: int) -> ArraySource:
    """``count`` natural-looking RGB images ``[count, H, W, 3]`` uint8 (``benchmarks/views.py``) as a source."""
    images = views_bench.sources(count, height, width).permute(0, 2, 3, 1).contiguous().numpy()
    return ArraySource(images, np.zeros(count, dtype=np.int64), ("synthetic",), IMAGENET_MEAN, IMAGENET_STD)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def our_step(cfg, device: torch.device) -> TrainStep:
    """The loop's step (:class:`TrainStep`) on a fresh seeded model of ``cfg`` on ``device``."""
    torch.manual_seed(0)
    model = SiameseIM(cfg).to(device).train()
    return TrainStep(model, build_optimizer(model.online, cfg), autocast_dtype(cfg, device), cfg.optim.clip_grad)


def fed_step_rate(cfg, source: ArraySource, device: torch.device, steps: int, warmup: int) -> dict:
    """Images/s of our step fed by the real loader with device views (rendering + H2D copy included).

    The loader hands over uint8 sources ``[B, 3, H, W]`` + view parameters; ``prepare_batch`` renders
    views ``[B, 3, S, S]`` on ``device``.
    """
    step = our_step(cfg, device)
    loader = iter(build_loader(source, cfg, 0, 1, 0, steps + warmup, on_device=True))
    start, waited = None, 0.0
    for i in range(steps + warmup):
        if i == warmup:
            _sync(device)
            start, waited = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        batch = next(loader)  # the host waits here when the loader workers fall behind
        waited += time.perf_counter() - t0
        out = step(prepare_batch(batch, device, cfg.data.img_size, source.mean, source.std), 1e-4, 0.996)
    out["loss"].item()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": seconds, "images_per_s": cfg.train.batch_size / seconds, "loader_wait_s_per_step": waited / steps}


def run_views(rec: Record, s: dict, device: torch.device) -> None:
    """Pairs/s of the device path, then the step fed by it vs by synthetic tensors."""
    height, width = s["source_hw"]
    images = views_bench.sources(max(s["images"], s["batch"]), height, width)
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None  # where DataLoader workers hand batches over
    rec.put(
        "setup",
        {
            "source_hw": [height, width],
            "size": s["size"],
            "batch": s["batch"],
            "device": str(device),
            "dev_shm_free_GiB": shm.f_bavail * shm.f_frsize / 2**30 if shm else None,
        },
    )

    full = views_bench.device_batched(images, s["size"], device, s["batch"], s["repeats"])
    rec.put("render_pairs_per_s", full)
    crops = views_bench.device_batched(images, s["size"], device, s["batch"], s["repeats"], crops_only=True)
    rec.put("crops_only_pairs_per_s", crops)
    del images

    overrides = [f"train.batch_size={s['batch']}", "run.num_workers=1", f"data.num_workers={s['loader_workers']}"]
    cfg = load_config(s["config"], [*overrides, f"data.img_size={s['size']}", *s["overrides"]])
    step = our_step(cfg, device)
    seconds, _ = throughput.measure(
        step, throughput.synthetic_batch(cfg, s["batch"], device), s["steps"], s["warmup"], device
    )
    rec.put("step_synthetic", {"step_s": seconds, "images_per_s": s["batch"] / seconds})
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    fed = fed_step_rate(cfg, synthetic_source(s["images"], height, width), device, s["steps"], s["warmup"])
    fed["loader_workers"] = s["loader_workers"]
    rec.put("step_fed_by_device_views", fed)
    rec.put("fed_over_synthetic", fed["images_per_s"] / rec.data["step_synthetic"]["images_per_s"])
