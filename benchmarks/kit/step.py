"""Sections ``step`` and ``loss_memory``: the training step ours vs the official formulation, and the loss's memory.

``step`` reuses ``benchmarks/throughput.py`` (its synthetic batch, reference step, timing and FLOP count):
ours eager, the reference, then ours under ``torch.compile`` (last: the riskiest, and the slowest to start).
``loss_memory`` times the UniGrad loss forward + backward on ``[N, D]`` rows, ours (row-wise negative term)
vs the release's ``diag(P C P^T)`` (an ``N x N`` matrix), with the peak bytes the CUDA allocator saw.
"""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import torch

from benchmarks import throughput
from benchmarks.kit.record import Record
from siamim.config import load_config
from siamim.losses.unigrad import unigrad_loss
from siamim.model.siamim import SiameseIM
from siamim.train.loop import autocast_dtype
from siamim.train.optim import build_optimizer
from siamim.train.step import TrainStep


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else the processor and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _build_step(cfg, device: torch.device, variant: str, backend: str):
    torch.manual_seed(0)
    model = SiameseIM(cfg).to(device).train()
    if variant == "reference":
        return (
            model,
            throughput.ReferenceStep(model, cfg, device),
            "fp16+GradScaler" if device.type == "cuda" else "fp32",
        )
    if variant == "ours_compiled":
        model.wrap_online(functools.partial(torch.compile, backend=backend))
    amp = autocast_dtype(cfg, device)
    return model, TrainStep(model, build_optimizer(model.online, cfg), amp, cfg.optim.clip_grad), str(amp or "fp32")


def run_step(rec: Record, s: dict, device: torch.device) -> None:
    """Images/s, TFLOP/s, MFU and peak memory of ours (eager, compiled) and the reference at ``s["batch"]``."""
    cfg = load_config(s["config"], ["run.num_workers=1", *s["overrides"]])
    batch = throughput.synthetic_batch(cfg, s["batch"], device)
    where = device_name(device)
    peak = next((v for k, v in throughput.PEAK_TFLOPS.items() if k in where), None)
    flops = throughput.step_flops(cfg, s["batch"])
    rec.put(
        "setup",
        {
            "config": s["config"],
            "batch": s["batch"],
            "img_size": cfg.data.img_size,
            "device": where,
            "analytic_TFLOP_per_step": flops / 1e12,
            "peak_TFLOPs": peak,
        },
    )
    for variant in ("ours", "reference", "ours_compiled"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model, step, precision = _build_step(cfg, device, variant, s["compile_backend"])
        seconds, memory = throughput.measure(step, batch, s["steps"], s["warmup"], device)
        tflops = flops / seconds / 1e12
        rec.put(
            variant,
            {
                "precision": precision,
                "compiled": variant == "ours_compiled",
                "compile_backend": s["compile_backend"] if variant == "ours_compiled" else None,
                "step_s": seconds,
                "images_per_s": s["batch"] / seconds,
                "TFLOP_per_s": tflops,
                "MFU": tflops / peak if peak else None,
                "peak_memory_GiB": memory,
                "peak_memory_kind": "CUDA allocator peak" if device.type == "cuda" else "process RSS (cumulative)",
                "wall_s_incl_warmup": time.perf_counter() - start,
            },
        )
        del model, step
    d = rec.data
    rec.put("speedup_ours_over_reference", d["ours"]["images_per_s"] / d["reference"]["images_per_s"])
    rec.put("speedup_compiled_over_eager", d["ours_compiled"]["images_per_s"] / d["ours"]["images_per_s"])


def _reference_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The release's loss (``throughput.ReferenceStep.loss``, N x N negative term) on ``[N, D]`` rows."""
    holder = SimpleNamespace(cfg=SimpleNamespace(loss=SimpleNamespace(neg_weight=0.02)))
    return throughput.ReferenceStep.loss(holder, pred, target)


def _ours_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return unigrad_loss(pred, target, 0.02)["loss"]


def loss_footprint(fn, rows: int, dim: int, device: torch.device, repeats: int) -> dict:
    """Forward + backward of ``fn(pred [rows, dim] bf16, target [rows, dim] bf16)``: ms and peak bytes.

    ``peak_bytes`` is the CUDA allocator's peak above what the inputs already held (None off CUDA).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    pred = torch.randn(rows, dim, generator=gen).to(device, torch.bfloat16).requires_grad_(True)
    target = torch.randn(rows, dim, generator=gen).to(device, torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn(pred, target).backward()  # warm-up (kernels, workspaces)
    pred.grad = None
    sync()
    base = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        loss = fn(pred, target)
        loss.backward()
        pred.grad = None
    sync()
    ms = (time.perf_counter() - start) / repeats * 1e3
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return {"ms": ms, "peak_bytes": peak, "loss": float(loss.detach())}


def run_loss_memory(rec: Record, s: dict, device: torch.device) -> None:
    """Per batch: ours vs the N x N formulation (rows = batch x tokens, width ``dim``)."""
    for batch in s["batches"]:
        rows = batch * s["tokens"]
        entry = {
            "batch": batch,
            "rows_N": rows,
            "dim": s["dim"],
            "analytic_NxN_bytes_fp32": 4 * rows * rows,
            "analytic_rows_bytes_fp32": 4 * rows * s["dim"],
        }
        for name, fn in (("ours", _ours_loss), ("reference", _reference_loss)):
            try:
                entry[name] = loss_footprint(fn, rows, s["dim"], device, s["repeats"])
            except torch.cuda.OutOfMemoryError as err:  # the same class as torch.OutOfMemoryError (2.5+)
                entry[name] = {"error": f"OutOfMemoryError: {str(err)[:200]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rec.append("batches", entry)
