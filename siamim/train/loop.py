"""The SiameseIM pretraining loop: plain PyTorch, no Ray or MLflow.

Runs single-process, or unchanged under an initialised ``torch.distributed``
process group (gloo on CPU, NCCL on GPU; torchrun or Ray Train set it up). The
platform hooks in through two callbacks, ``reporter`` and ``checkpoint_saver``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from siamim import dist
from siamim.checkpoint import FORMAT_VERSION, rng_state, save_checkpoint, set_rng_state
from siamim.config import Config, to_dict
from siamim.data.pipeline import build_loader, prepare_batch, views_on_device
from siamim.data.sources import build_source
from siamim.device import resolve_device
from siamim.eval.monitor import METRIC as MONITOR_METRIC
from siamim.eval.monitor import KnnMonitor
from siamim.model.siamim import SiameseIM
from siamim.train.optim import build_optimizer
from siamim.train.progress import TrainProgress
from siamim.train.schedules import lr_at, momentum_at
from siamim.train.step import MetricBuffer, TrainStep, wrap_for_training

Reporter = Callable[[dict], None]
IntervalHook = Callable[[int, bool], None]
CheckpointSaver = Callable[[dict | None, int], None]


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 under ``auto`` on CUDA devices that support it, else fp32 (None)."""
    if cfg.train.precision == "fp32":
        return None
    if cfg.train.precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def plan_steps(epochs: float, steps_per_epoch: int) -> int:
    """The plan's length in steps: the loop's, ``--resume``'s, the grid's and the search's."""
    return max(1, int(round(epochs * steps_per_epoch)))


def step_plan(cfg: Config, num_samples: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, warmup_steps)`` for the global batch."""
    steps_per_epoch = num_samples // cfg.train.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} exceeds the {num_samples} training images")
    total = plan_steps(cfg.train.epochs, steps_per_epoch)
    warmup = min(total, int(round(cfg.optim.warmup_epochs * steps_per_epoch)))
    return steps_per_epoch, total, warmup


def schedule_plan(cfg: Config, num_samples: int, resume_state: dict | None = None) -> dict:
    """The lr/EMA plan: ``{"steps_per_epoch", "total_steps", "warmup_steps", "restarts"}``.

    When a resumed run's plan length differs from its checkpoint's (``train.epochs``
    changed, or ``jobs/pretrain.py --more-steps`` grew it), the cosine is re-planned
    over the new length and a *restart* is recorded: from the checkpoint's step the
    lr ramps linearly, over the plan's warm-up length, from the lr it last used to
    the re-planned curve (no jump). EMA momentum follows the re-planned cosine.
    Restarts are stored in every checkpoint, so a further resume continues them exactly.
    """
    steps_per_epoch, total, warmup = step_plan(cfg, num_samples)
    plan = {"steps_per_epoch": steps_per_epoch, "total_steps": total, "warmup_steps": warmup, "restarts": []}
    if resume_state is None:
        return plan
    old = resume_state.get("plan")
    if old is not None:
        plan["restarts"] = [dict(r) for r in old.get("restarts", [])]
        old_total = int(old["total_steps"])
    else:  # a checkpoint from before plans were recorded: its plan from its config
        old_total = plan_steps(float(resume_state["config"]["train"]["epochs"]), steps_per_epoch)
    step = int(resume_state["step"])
    if old_total != total and step > 0:
        groups = resume_state.get("optimizer", {}).get("param_groups") or [{}]
        from_lr = float(groups[0].get("lr", 0.0))
        plan["restarts"].append(
            {"step": step, "from_lr": from_lr, "steps": max(1, warmup), "old_total_steps": old_total}
        )
    return plan


def planned_lr(step: int, plan: dict, peak_lr: float, min_lr: float) -> float:
    """The lr at ``step`` under ``plan``: warm-up + cosine, with the latest restart's ramp blended in."""
    lr = lr_at(step, plan["total_steps"], plan["warmup_steps"], peak_lr, min_lr)
    started = [r for r in plan.get("restarts", []) if r["step"] <= step]
    if started:
        r = started[-1]
        if step < r["step"] + r["steps"]:
            frac = (step + 1 - r["step"]) / r["steps"]
            lr = r["from_lr"] + (lr - r["from_lr"]) * frac
    return lr


def training_state(model: SiameseIM, optimizer, step: int, cfg: Config, plan: dict | None = None) -> dict:
    """The checkpoint dict. Its tensors are live references: serialise it before training goes on."""
    state = {
        "format": FORMAT_VERSION,
        "step": step,
        "config": to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
    }
    if plan is not None:
        state["plan"] = plan
    return state


def default_saver(cfg: Config) -> CheckpointSaver:
    """Writes ``<train.output_dir>/checkpoint.pt`` on rank 0."""

    def save(state: dict | None, step: int) -> None:
        if state is not None:
            save_checkpoint(Path(cfg.train.output_dir) / "checkpoint.pt", state)

    return save


def pretrain(
    cfg: Config,
    *,
    device: torch.device | str | None = None,
    reporter: Reporter | None = None,
    checkpoint_saver: CheckpointSaver | None = None,
    on_interval: IntervalHook | None = None,
    resume_state: dict | None = None,
    verbose: bool = True,
) -> dict:
    """Pretrain SiameseIM.

    Args:
        device: where to train (default from ``cfg.train.device``).
        reporter: called on rank 0 after every step with float metrics
            ``step, epoch, loss, lr, momentum, grad_norm, images_per_s`` (+ UniGrad terms).
        checkpoint_saver: called on every rank every ``train.checkpoint_every``
            steps and at the end, with the training state (rank 0) or None.
            Default: :func:`default_saver`.
        on_interval: called on every rank at the end of each log interval (after the
            ``reporter`` calls of its steps) as ``on_interval(step, checkpoint_follows)``;
            ``checkpoint_follows`` says that ``checkpoint_saver`` is called next, at the same step.
        resume_state: a checkpoint dict; training continues at its next step.
    Returns:
        ``{"step", "encoder" (online timm ViT), "state" (rank 0, else None)}``.
    """
    device = torch.device(device) if device is not None else resolve_device(cfg.train.device, "train.device")
    rank, world = dist.rank(), dist.world_size()
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} workers")
    saver = checkpoint_saver or default_saver(cfg)
    source = build_source(cfg.data.dataset, cfg.data.root, "train")
    if cfg.data.train_subset is not None and cfg.data.train_subset < len(source):
        source = source.subset(torch.arange(cfg.data.train_subset).numpy())
    plan = schedule_plan(cfg, len(source), resume_state)
    steps_per_epoch, total_steps = plan["steps_per_epoch"], plan["total_steps"]
    stop_step = min(total_steps, cfg.train.max_steps or total_steps)

    torch.manual_seed(cfg.train.seed)
    model = SiameseIM(cfg).to(device)
    optimizer = build_optimizer(model.online, cfg)
    start_step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        set_rng_state(resume_state["rng"])
        start_step = int(resume_state["step"])
    elif cfg.train.init_from:
        from siamim.train.init_from import init_encoder_from

        origin = init_encoder_from(model, cfg, cfg.train.init_from)
        if verbose and rank == 0:
            print(f"[siamim] encoder initialised from {cfg.train.init_from} ({origin['layout']})", flush=True)
    wrap_for_training(model, cfg, device, world)  # DDP / torch.compile, in place
    model.train()
    peak_lr = cfg.optim.blr * cfg.train.batch_size / 256
    loader = build_loader(source, cfg, rank, world, start_step, stop_step, on_device=views_on_device(cfg, device))
    progress = TrainProgress(
        total_steps=total_steps,
        start_step=start_step,
        steps_per_epoch=steps_per_epoch,
        enabled=verbose and rank == 0,
        stop_step=stop_step,
    )
    train_step = TrainStep(model, optimizer, autocast_dtype(cfg, device), cfg.optim.clip_grad)
    monitor = KnnMonitor(cfg, device) if cfg.eval.monitor_every and rank == 0 else None
    buffer = MetricBuffer()
    step = start_step
    state = None
    interval_start = time.perf_counter()
    interval_first = start_step
    for batch in loader:
        batch = prepare_batch(batch, device, cfg.data.img_size, source.mean, source.std)
        lr = planned_lr(step, plan, peak_lr, cfg.optim.min_lr)
        momentum = momentum_at(step, total_steps, cfg.optim.ema_m0)
        out = train_step(batch, lr, momentum)  # device scalars: no host sync here
        step += 1
        buffer.add(out, {"step": step, "epoch": step / steps_per_epoch, "lr": lr, "momentum": momentum})
        last = step == stop_step
        save = last or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0)
        watch = monitor is not None and step % cfg.eval.monitor_every == 0  # a reporting step of its own
        if last or save or watch or step % cfg.train.log_every == 0 or step == start_step + 1:  # 1st: start-up time
            # One transfer per interval; raises on a non-finite loss before anything is saved.
            flushed = buffer.flush()
            now = time.perf_counter()
            rate = cfg.train.batch_size * (step - interval_first) / max(now - interval_start, 1e-9)
            if watch or (monitor is not None and last):
                flushed[-1].update(monitor(model.online.encoder))
                flushed[-1]["knn_monitor_s"] = monitor.seconds  # its cost so far, outside images_per_s
                now = time.perf_counter()
            interval_start, interval_first = now, step
            for metrics in flushed:
                metrics["images_per_s"] = rate  # mean over the interval (per-step times would need a sync)
                if rank == 0 and reporter is not None:
                    reporter(metrics)
            if rank == 0:  # once per interval: its timing is the interval's
                progress.update(
                    flushed[-1], log=step % cfg.train.log_every == 0 or last or MONITOR_METRIC in flushed[-1]
                )
            if on_interval is not None:
                on_interval(step, bool(save))
        if save:
            state = training_state(model, optimizer, step, cfg, plan) if rank == 0 else None
            saver(state, step)
    if step == start_step:  # nothing left to train (resumed at the end): still hand back a state
        state = training_state(model, optimizer, step, cfg, plan) if rank == 0 else None
    return {"step": step, "encoder": model.online.encoder, "state": state}
