"""Images/s and peak memory of the full SiameseIM training step (no Ray).

One step = online forward on masked view 1, target forward on view 2, UniGrad
loss, backward, grad clipping, AdamW, EMA update: exactly the loop's step, on a
synthetic batch (random pixels, real geometry and masks from the project's own
code), so data loading is excluded. Single process; bf16 autocast on GPU.

    python benchmarks/throughput.py --config tiny --batch-size 256
    python benchmarks/throughput.py --config vit_base --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time

import torch

from siamim.config import load_config
from siamim.data.geometry import relative_geometry
from siamim.data.masks import make_mask
from siamim.data.pipeline import mask_indices
from siamim.data.views import sample_crop
from siamim.model.siamim import SiameseIM
from siamim.train.loop import autocast_dtype
from siamim.train.optim import build_optimizer


def synthetic_batch(cfg, batch: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    size, grid = cfg.data.img_size, cfg.grid_size
    boxes = [[sample_crop(size, size, (cfg.views.crop_min, 1.0), gen) for _ in range(2)] for _ in range(batch)]
    box1 = torch.tensor([b[0] for b in boxes], dtype=torch.float32)
    box2 = torch.tensor([b[1] for b in boxes], dtype=torch.float32)
    flips = torch.rand(2, batch, generator=gen) < 0.5
    mask = torch.stack([make_mask(cfg.mask.type, grid, cfg.num_masked, gen, cfg.mask.min_block) for _ in range(batch)])
    out = {
        "view1": torch.randn(batch, 3, size, size, generator=gen),
        "view2": torch.randn(batch, 3, size, size, generator=gen),
        "geometry": relative_geometry(box1, box2, flips[0], flips[1], torch.full((batch,), float(size))),
        "mask": mask,
    }
    out["ids_keep"], out["ids_masked"] = mask_indices(mask)
    return {k: v.to(device) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch (default: config's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the online branch")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config, [f"train.precision={args.precision}", "run.num_workers=1", *args.overrides])
    device = torch.device(args.device)
    batch_size = args.batch_size or cfg.train.batch_size
    torch.manual_seed(0)
    model = SiameseIM(cfg).to(device).train()
    online = torch.compile(model.online) if args.compile else model.online
    opt = build_optimizer(model.online, cfg)
    for g in opt.param_groups:
        g["lr"] = 1e-4
    params = [p for p in model.online.parameters() if p.requires_grad]
    amp = autocast_dtype(cfg, device)
    batch = synthetic_batch(cfg, batch_size, device)

    def step() -> float:
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = model(batch, online=online)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad or 1e9)
        opt.step()
        model.update_target(0.996)
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        where = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)
        where = f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    print(json.dumps({
        "config": args.config, "device": where, "precision": str(amp or "fp32"), "batch": batch_size,
        "params_online_M": round(sum(p.numel() for p in model.online.parameters()) / 1e6, 2),
        "step_s": round(elapsed / args.steps, 4), "images_per_s": round(batch_size * args.steps / elapsed, 1),
        "peak_memory_GiB": round(peak, 2), "compiled": args.compile,
    }))


if __name__ == "__main__":
    main()
