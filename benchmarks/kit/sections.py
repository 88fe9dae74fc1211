"""The body of one section: runs it on the device and leaves its record in ``<work>/<name>.json``."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.kit.record import Record

SECTIONS = ("step", "loss_memory", "views", "e2e", "grid")


def preload() -> None:
    """Import every section's modules (torch, timm, siamim) without touching CUDA, before the kit forks."""
    import benchmarks.kit.e2e
    import benchmarks.kit.grid
    import benchmarks.kit.grid_worker
    import benchmarks.kit.step
    import benchmarks.kit.views  # noqa: F401


def run_one(name: str, work: Path, budget: float, device_name: str, mode: dict) -> int:
    """Run section ``name`` with the sizes ``mode`` (:func:`benchmarks.kit.sizes.sizes`); 0 on success,
    1 with ``error`` in the record on failure.

    ``budget``: seconds the section has (the sections that start processes stop them 2 s before).
    """
    deadline = time.monotonic() + budget - 2.0
    s = mode[name]
    if mode["cpu_threads"]:
        torch.set_num_threads(mode["cpu_threads"])
        os.environ["OMP_NUM_THREADS"] = str(mode["cpu_threads"])  # the processes a section starts
    device = torch.device(device_name)
    rec = Record(work / f"{name}.json")
    rec.put("started", time.time())
    try:
        if name == "step":
            from benchmarks.kit.step import run_step

            run_step(rec, s, device)
        elif name == "loss_memory":
            from benchmarks.kit.step import run_loss_memory

            run_loss_memory(rec, s, device)
        elif name == "views":
            from benchmarks.kit.views import run_views

            run_views(rec, s, device)
        elif name == "e2e":
            from benchmarks.kit.e2e import run_e2e

            run_e2e(rec, s, device, work, deadline)
        elif name == "grid":
            from benchmarks.kit.grid import run_grid

            run_grid(rec, s, device.type, work, deadline)
        else:
            raise ValueError(f"unknown section {name!r}; the sections are {', '.join(SECTIONS)}")
    except Exception as err:
        rec.put("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}")
        print(rec.data["error"], file=sys.stderr, flush=True)
        return 1
    rec.put("finished", time.time())
    return 0
