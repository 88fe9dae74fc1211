"""The device kit: every GPU figure of the project in one call, each section in its own time budget.

    python -m benchmarks.device_kit --out DIR            # on one H100/H200: all sections, under 8 minutes
    python -m benchmarks.device_kit --out DIR --smoke    # tiny sizes on CPU (CI runs this)
    python -m benchmarks.device_kit --out DIR --sections step,views

Writes ``DIR/kit.json`` (every figure, per-section status / budget / wall time / error) and ``DIR/kit.md``
(the same as tables), plus the grid's ``ablation_table.csv`` and ``ablation_paired.csv``. Sections:

- ``step``: the training step, ours (eager, then ``torch.compile``) vs the official formulation
  (``benchmarks/throughput.py``): images/s, TFLOP/s, MFU, peak memory; ViT-B/16 at 224, batch 128, bf16;
- ``loss_memory``: the UniGrad loss at batch 128/256/512, ours (row-wise) vs the N x N formulation, peak bytes;
- ``views``: the device view path at 224 px from ImageNet-sized synthetic sources, pairs/s, and the step fed
  by it vs fed by synthetic tensors;
- ``e2e``: ``python -m siamim.train`` on the device (Fashion-MNIST, device views), checkpoint, resume, kNN, reload;
- ``grid``: the ablation rows a-k x 3 seeds with the plain loop, kNN + LIN, ``jobs/ablate.py``'s table format.

A section that fails or runs out of time is recorded and the kit goes on. Imports no ray, mlflow or boto3.
``scripts/device_check.sh`` is the GPU machine's wrapper (wheels, data, log); docs/benchmarks.md says how to run it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.kit.runner import SECTIONS, run_kit
from benchmarks.kit.sections import run_one
from benchmarks.kit.sizes import sizes


def environment() -> dict:
    """Versions and the GPU's name (from nvidia-smi, so the kit's own process holds no CUDA context)."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import timm

        env["timm"] = timm.__version__
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        env["gpu"] = names or None
    except (OSError, subprocess.SubprocessError):
        env["gpu"] = None
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for kit.json / kit.md / the grid's CSV files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (on CPU unless --device says otherwise)")
    parser.add_argument(
        "--device", default=None, help="cuda or cpu (default: cuda when there is an NVIDIA GPU; cpu with --smoke)"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in kit order")
    parser.add_argument("--work", default=None, help="scratch folder (checkpoints, logs); default: a temp dir")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    parser.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    env = environment()
    # From nvidia-smi or the device node, not torch.cuda: the kit's process must not initialise CUDA
    # before it forks the sections.
    gpu = env["gpu"] or Path("/dev/nvidia0").exists()
    device = args.device or ("cuda" if gpu and not args.smoke else "cpu")
    if args.section:
        return run_one(args.section, Path(args.work), args.budget, device, sizes(args.smoke))
    if not args.out:
        parser.error("--out DIR is required")
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="siamim-kit-"))
    kit = run_kit(
        Path(args.out), work, device, args.smoke, [s for s in SECTIONS if s in chosen], sizes(args.smoke), env
    )
    print(json.dumps({name: sec["status"] for name, sec in kit["sections"].items()}), flush=True)
    print(f"[kit] wall {kit['wall_s']:.1f} s; figures in {args.out}/kit.json and kit.md; scratch {work}", flush=True)
    return 0 if all(sec["status"] == "ok" for sec in kit["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
