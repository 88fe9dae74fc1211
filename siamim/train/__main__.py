"""Plain-PyTorch pretraining entry point (no Ray): ``python -m siamim.train --config tiny key=value ...``.

Also runs under ``torchrun --nproc-per-node N -m siamim.train ...`` (gloo on CPU,
NCCL on GPU). The Ray job is ``jobs/pretrain.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

from siamim import dist
from siamim.checkpoint import load_checkpoint
from siamim.config import ConfigError, dump_yaml, load_config
from siamim.device import resolve_device
from siamim.eval.knn import evaluate_knn
from siamim.train.loop import pretrain
from siamim.train.progress import format_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m siamim.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="preset name in configs/ or a YAML path (default: tiny)")
    parser.add_argument("--resume", action="store_true", help="continue from <train.output_dir>/checkpoint.pt")
    parser.add_argument("--no-knn", action="store_true", help="skip the final kNN evaluation")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.depth=6 train.epochs=2")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(
        f"cuda:{torch.cuda.current_device()}"
        if torch.cuda.is_available() and cfg.train.device != "cpu"
        else cfg.train.device,
        "train.device",
    )
    out_dir = Path(cfg.train.output_dir)
    resume = load_checkpoint(out_dir / "checkpoint.pt") if args.resume else None
    if dist.rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    start = time.perf_counter()
    result = pretrain(cfg, device=device, resume_state=resume)
    if dist.rank() == 0:
        line = f"[siamim] done: step {result['step']} | checkpoint {out_dir / 'checkpoint.pt'}"
        if not args.no_knn:
            line += f" | kNN top-1 {evaluate_knn(result['encoder'], cfg, device, log=print):.2f}%"
        print(line + f" | wall {format_seconds(time.perf_counter() - start)}", flush=True)
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
