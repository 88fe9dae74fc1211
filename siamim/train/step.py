"""One SiameseIM optimisation step, shared by the training loop and ``benchmarks/throughput.py``.

The step never synchronises with the host: the loss, the UniGrad terms and the
gradient norm come back as device tensors, and :class:`MetricBuffer` turns them
into floats once per logging interval (one transfer for the whole interval),
where it also checks that every loss was finite.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def uses_sync_batchnorm(cfg, device: torch.device, world_size: int) -> bool:
    """BatchNorm statistics over all workers: ``model.norm=bn`` under DDP on CUDA (SyncBatchNorm needs CUDA;
    on CPU each worker normalises over its own part of the batch)."""
    return world_size > 1 and device.type == "cuda" and cfg.model.norm == "bn"


def convert_sync_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm of the online *and* the EMA target branch becomes a SyncBatchNorm, in place.

    The release converts the whole model, so the target's projector BatchNorm also normalises over
    the global batch. Parameters and buffers stay the same objects (the optimiser and the EMA pairs
    still hold them), and state-dict names do not change.
    """
    model.online = nn.SyncBatchNorm.convert_sync_batchnorm(model.online)
    if model.target is not None:
        model.target = nn.SyncBatchNorm.convert_sync_batchnorm(model.target)


def wrap_for_training(model: nn.Module, cfg, device: torch.device, world_size: int) -> None:
    """Wrap ``model.online`` in place: DDP when ``world_size > 1``, then ``torch.compile`` if ``train.compile``.

    ``model`` is a :class:`siamim.model.siamim.SiameseIM`. Under DDP on CUDA a ``model.norm=bn`` model
    gets SyncBatchNorm in both branches (:func:`convert_sync_batchnorm`).

    Call it after building the optimiser and loading any checkpoint: the parameters stay the same
    objects, and the state dict keeps the bare branch's names (:meth:`SiameseIM.wrap_online`).
    """
    if world_size > 1:
        if uses_sync_batchnorm(cfg, device, world_size):
            convert_sync_batchnorm(model)
        device_ids = [device.index] if device.type == "cuda" else None
        model.wrap_online(lambda online: DistributedDataParallel(online, device_ids=device_ids))
    if cfg.train.compile:
        model.wrap_online(torch.compile)


class TrainStep:
    """forward (autocast) -> backward -> clip -> AdamW -> EMA update.

    Args:
        model: the :class:`siamim.model.siamim.SiameseIM` method object (its online branch possibly
            wrapped in place by :func:`wrap_for_training`).
        optimizer: over ``model.online``'s trainable parameters.
        amp: autocast dtype, or None for fp32.
        clip_grad: max gradient norm, or None (the norm is still computed, on the device).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        amp: torch.dtype | None,
        clip_grad: float | None,
    ):
        self.model, self.optimizer = model, optimizer
        self.amp, self.clip_grad = amp, clip_grad
        self.params = [p for p in model.online.parameters() if p.requires_grad]

    def __call__(self, batch: dict, lr: float, momentum: float) -> dict[str, torch.Tensor]:
        """Train on ``batch`` (a :class:`siamim.data.pipeline.Collate` batch on the device).

        Returns detached device scalars ``loss``, ``grad_norm`` (+ the loss's terms).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        device_type = batch["view1"].device.type
        ctx = torch.autocast(device_type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with ctx:
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if self.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.params if p.grad is not None])
            )
        self.optimizer.step()
        self.model.update_target(momentum)
        return {**{k: v.detach() for k, v in out.items()}, "grad_norm": grad_norm.detach()}


class MetricBuffer:
    """Per-step metrics kept on the device until a flush turns them into floats in one transfer."""

    def __init__(self):
        self.pending: list[tuple[dict[str, torch.Tensor], dict[str, float]]] = []

    def add(self, device_metrics: dict[str, torch.Tensor], host_metrics: dict[str, float]) -> None:
        self.pending.append((device_metrics, host_metrics))

    def flush(self) -> list[dict[str, float]]:
        """The buffered steps as float dicts (oldest first); raises if any loss was not finite."""
        if not self.pending:
            return []
        keys = list(self.pending[0][0])
        values = torch.stack([torch.stack([d[k].float() for k in keys]) for d, _ in self.pending]).tolist()
        out = []
        for (_, host), row in zip(self.pending, values, strict=True):
            metrics = {**host, **dict(zip(keys, row, strict=True))}
            if not math.isfinite(metrics["loss"]):
                self.pending = []
                raise FloatingPointError(
                    f"non-finite loss {metrics['loss']} at step {int(metrics['step']) - 1} "
                    f"(lr {metrics['lr']:.3g}); lower optim.blr or check the data"
                )
            out.append(metrics)
        self.pending = []
        return out
