"""Section ``e2e``: the plain loop end to end on the device (``python -m siamim.train``, no Ray).

Two runs of the real entry point on Fashion-MNIST with device views: the first trains ``first_steps``
and writes its checkpoint; the second resumes from it (``--resume``) to ``total_steps`` and ends with the
kNN top-1. Then this process reloads the final checkpoint (integrity record, step, encoder) and runs the
encoder on the device. Catches what only a GPU shows: bf16 autocast, fused AdamW, device views, CUDA
checkpoint round trips.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.kit.record import Record
from siamim.checkpoint import load_checkpoint, load_encoder

KNN_LINE = re.compile(r"kNN top-1 ([0-9.]+)%")
TRAIN_RATE = re.compile(r"\| ([0-9.]+) img/s \| ETA")  # the loop's progress lines (not the kNN extraction's)


def train_run(args: list[str], log: Path, timeout: float) -> tuple[float, str]:
    """Run ``python -m siamim.train ARGS``; ``(wall seconds, stdout)``; raises with the log's tail on failure."""
    start = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(
            [sys.executable, "-m", "siamim.train", *args], stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
        )
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"python -m siamim.train {' '.join(args)} exited {done.returncode}:\n{text[-3000:]}")
    return time.perf_counter() - start, text


def run_e2e(rec: Record, s: dict, device: torch.device, work: Path, deadline: float) -> None:
    """Train, resume, kNN, reload (``deadline``: ``time.monotonic()`` by which the section must end)."""
    out = work / "e2e"
    common = [f"train.output_dir={out}", f"train.device={device.type}", *s["overrides"]]
    rec.put(
        "setup",
        {"config": s["config"], "overrides": common, "first_steps": s["first_steps"], "total_steps": s["total_steps"]},
    )
    wall, _ = train_run(
        ["--config", s["config"], "--no-knn", *common, f"train.max_steps={s['first_steps']}"],
        work / "e2e_first.log",
        deadline - time.monotonic(),
    )
    first = load_checkpoint(out / "checkpoint.pt")
    rec.put("first_run", {"wall_s": wall, "checkpoint_step": int(first["step"])})
    wall, text = train_run(
        ["--config", s["config"], "--resume", *common, f"train.max_steps={s['total_steps']}"],
        work / "e2e_resume.log",
        deadline - time.monotonic(),
    )
    found = KNN_LINE.findall(text)
    if not found:
        raise RuntimeError(f"no 'kNN top-1' line in the resumed run's output:\n{text[-2000:]}")
    rates = [float(x) for x in TRAIN_RATE.findall(text)]
    rec.put(
        "resumed_run", {"wall_s": wall, "knn_top1": float(found[-1]), "last_images_per_s": rates[-1] if rates else None}
    )

    state = load_checkpoint(out / "checkpoint.pt")  # checks the integrity record
    encoder, cfg = load_encoder(state)
    encoder = encoder.to(device)
    with torch.no_grad():
        x = torch.randn(4, 3, cfg.data.img_size, cfg.data.img_size, device=device)
        feats = encoder.forward_features(x)
    rec.put(
        "reloaded",
        {
            "checkpoint_step": int(state["step"]),
            "views_on": cfg.data.views_on,
            "train_device": cfg.train.device,
            "features_finite": bool(torch.isfinite(feats).all()),
            "feature_shape": list(feats.shape),
        },
    )
    if int(state["step"]) != s["total_steps"] or int(first["step"]) != s["first_steps"]:
        raise RuntimeError(
            f"checkpoint steps {int(first['step'])}/{int(state['step'])}, expected "
            f"{s['first_steps']}/{s['total_steps']}"
        )
    if not rec.data["reloaded"]["features_finite"]:
        raise RuntimeError("the reloaded encoder gave non-finite features")
