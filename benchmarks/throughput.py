"""Images/s, TFLOP/s, MFU and peak memory of the SiameseIM training step, ours vs the official formulation.

"ours" is the loop's own step (:class:`siamim.train.step.TrainStep`: bf16 autocast
on GPU, UniGrad negative term row-wise in fp32, fused AdamW on CUDA, foreach EMA,
no host sync). "reference" is the official release's formulation on the same
model and batch: negative term as ``diag(P C P^T)`` of an N x N matrix, a
per-parameter Python EMA loop, fp16 autocast with a GradScaler (fp32 on CPU,
where fp16 autocast does not apply), unfused AdamW. Both on a synthetic batch
(random pixels, real geometry and masks), so data loading is excluded.

    python benchmarks/throughput.py --config tiny --batch-size 256
    python benchmarks/throughput.py --config vit_base --batch-size 128 --device cuda [--compile]
    python benchmarks/throughput.py --smoke          # a couple of tiny steps (CI: the script runs)

The FLOP count is analytical (printed): matmul FLOPs of the online forward x 3
(forward + backward) plus the target forward; MFU = achieved / ``--peak-tflops``
(defaults: 989 bf16 dense for H100/H200).
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
from siamim.train.step import TrainStep


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


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16/fp16 tensor-core peaks


def _block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward matmul FLOPs of one transformer block over ``tokens`` tokens (per image)."""
    dense = 2 * tokens * dim * dim * (4 + 2 * mlp_ratio)  # qkv (3D^2) + proj (D^2) + MLP (2 r D^2), x2 for MACs
    attention = 2 * 2 * tokens * tokens * dim  # QK^T and AV
    return dense + attention


def step_flops(cfg, batch: int) -> float:
    """Analytical training FLOPs of one step (MAE-like heads; linear layers and attention only)."""
    m, grid = cfg.model, cfg.grid_size
    num, visible = grid * grid, grid * grid - cfg.num_masked
    queries = cfg.num_masked if not cfg.views.different_views else num

    def enc(n):
        return m.depth * _block_flops(n, m.embed_dim, m.mlp_ratio)

    def proj(n):
        return 2 * n * m.embed_dim * m.decoder_dim + m.projector_depth * _block_flops(n, m.decoder_dim, m.mlp_ratio)

    seq = 1 + visible + queries
    out_dim = 3 * m.patch_size**2 if m.target == "pixel" else m.decoder_dim
    pred = (
        m.predictor_depth * _block_flops(seq, m.decoder_dim, m.mlp_ratio)
        + 2 * seq * m.decoder_dim * out_dim
        + 2 * queries * 2 * m.decoder_dim * m.decoder_dim
    )  # blocks + head + relative position linear
    patch = 2 * num * 3 * m.patch_size**2 * m.embed_dim  # frozen: forward only
    online = enc(1 + visible) + proj(1 + visible) + pred
    target = 0.0 if m.target == "pixel" else enc(1 + num) + proj(1 + num)
    loss = 2 * 2 * queries * m.decoder_dim**2  # z^T z and P C
    return batch * (3 * online + target + 2 * patch + 3 * loss)


class ReferenceStep:
    """The official release's step on our model: N x N negative term, Python EMA loop, fp16 + GradScaler."""

    def __init__(self, model, cfg, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.params = [p for p in model.online.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=tuple(cfg.optim.betas), foreach=False)
        self.fp16 = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.fp16)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, z = pred.float().reshape(-1, pred.shape[-1]), target.float().reshape(-1, target.shape[-1])
        positive = ((p - z) ** 2).sum(-1).mean()
        corr = z.T @ z / z.shape[0]
        negative = torch.diagonal(p @ corr @ p.T).mean()  # the N x N matrix the release builds
        return (positive + self.cfg.loss.neg_weight * negative) / p.shape[-1]

    def __call__(self, batch: dict, lr: float, momentum: float) -> dict[str, torch.Tensor]:
        model = self.model
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.fp16 else contextlib.nullcontext()
        with ctx:
            pred = model.online(batch["view1"], batch["mask"], batch["ids_keep"], batch["geometry"], None)
            target = model.compute_target(batch["view2"])
        with torch.autocast(self.device.type, enabled=False):
            loss = self.loss(pred, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad or 1e9)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            for t, o in zip(*model.target_pairs(), strict=True):  # per-parameter Python loop, as the release
                t.data = t.data * momentum + o.data * (1.0 - momentum)
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}


def measure(step, batch: dict, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """``(seconds per step, peak memory GiB)`` over ``steps`` timed steps after ``warmup``."""
    for _ in range(warmup):
        step(batch, 1e-4, 0.996)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        out = step(batch, 1e-4, 0.996)
    out["loss"].item()  # one sync at the end
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS, cumulative)
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch (default: config's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the online branch (ours)")
    parser.add_argument("--no-reference", action="store_true", help="time only our step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default by name)")
    parser.add_argument("--smoke", action="store_true", help="2 tiny steps of each (CI: the script runs)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.smoke:
        args.config, args.batch_size, args.steps, args.warmup = "tiny", 8, 1, 1
        args.overrides += ["model.depth=1", "model.projector_depth=1", "model.predictor_depth=1"]

    cfg = load_config(args.config, [f"train.precision={args.precision}", "run.num_workers=1", *args.overrides])
    device = torch.device(args.device)
    batch_size = args.batch_size or cfg.train.batch_size
    batch = synthetic_batch(cfg, batch_size, device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in where), None)
    flops = step_flops(cfg, batch_size)
    print(
        json.dumps(
            {
                "config": args.config,
                "device": where,
                "batch": batch_size,
                "analytic_TFLOP_per_step": round(flops / 1e12, 4),
                "peak_TFLOPs": peak,
            }
        )
    )
    results = {}
    runs = [("ours", False)] + ([] if args.no_reference else [("reference", True)])
    for name, reference in runs:
        torch.manual_seed(0)
        model = SiameseIM(cfg).to(device).train()
        if reference:
            step = ReferenceStep(model, cfg, device)
            precision = "fp16+GradScaler" if device.type == "cuda" else "fp32"
        else:
            if args.compile:
                model.wrap_online(torch.compile)
            amp = autocast_dtype(cfg, device)
            step = TrainStep(model, build_optimizer(model.online, cfg), amp, cfg.optim.clip_grad)
            precision = str(amp or "fp32")
        seconds, memory = measure(step, batch, args.steps, args.warmup, device)
        tflops = flops / seconds / 1e12
        results[name] = batch_size / seconds
        print(
            json.dumps(
                {
                    "step": name,
                    "precision": precision,
                    "compiled": args.compile and not reference,
                    "params_online_M": round(sum(p.numel() for p in model.online.parameters()) / 1e6, 2),
                    "step_s": round(seconds, 4),
                    "images_per_s": round(batch_size / seconds, 1),
                    "TFLOP_per_s": round(tflops, 3),
                    "MFU": round(tflops / peak, 4) if peak else None,
                    "peak_memory_GiB": round(memory, 2),
                }
            ),
            flush=True,
        )
        del model, step
    if "reference" in results:
        print(json.dumps({"speedup_ours_over_reference": round(results["ours"] / results["reference"], 3)}))


if __name__ == "__main__":
    main()
